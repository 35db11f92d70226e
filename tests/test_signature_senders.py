"""Signature schemes of Stripe, Slack, Shopify and GitLab against each sender's own reference.

The oracle is never our code: Stripe's and Slack's own Python libraries sign and verify, and
Shopify's scheme is checked against a published example. Every case asserts both sides: what
the reference accepts we accept, and what it refuses we refuse.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest
import stripe
from slack_sdk.signature import Clock, SignatureVerifier

from eventrunner.core.errors import SignatureError
from eventrunner.server.signatures import (
    SCHEMES,
    check_request,
    sign_shopify,
    sign_slack,
    sign_stripe,
)
from eventrunner.workspace.settings import WEBHOOK_SCHEMES

NOW = 1_764_000_000.0  # a fixed instant, for every check that is given its clock


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
    header: str, body: bytes, now: float, secrets: tuple[str, ...] = (STRIPE_SECRET,)
) -> bool:
    headers = {"Stripe-Signature": header}
    return accepted(lambda: check_request(secrets, headers, body, accepted=["stripe"], now=now))


Case = Callable[[int], tuple[str, bytes]]  # the current time -> header, body
STRIPE_CASES: dict[str, tuple[Case, bool]] = {
    "valid": (lambda ts: (stripe_header(STRIPE_SECRET, ts), STRIPE_BODY), True),
    "4 minutes old": (lambda ts: (stripe_header(STRIPE_SECRET, ts - 240), STRIPE_BODY), True),
    "rolled secret: old and new v1": (
        lambda ts: (
            stripe_header(STRIPE_OLD_SECRET, ts) + "," + stripe_v1(STRIPE_SECRET, ts),
            STRIPE_BODY,
        ),
        True,
    ),
    "a v0 entry beside v1": (
        lambda ts: (f"t={ts},v0=00ff," + stripe_v1(STRIPE_SECRET, ts), STRIPE_BODY),
        True,
    ),
    "tampered body": (
        lambda ts: (stripe_header(STRIPE_SECRET, ts), STRIPE_BODY.replace(b"1Nq2", b"1Nq3")),
        False,
    ),
    "wrong secret": (lambda ts: (stripe_header(STRIPE_OLD_SECRET, ts), STRIPE_BODY), False),
    "6 minutes old": (lambda ts: (stripe_header(STRIPE_SECRET, ts - 360), STRIPE_BODY), False),
    "signature for another timestamp": (
        lambda ts: (f"t={ts}," + stripe_v1(STRIPE_SECRET, ts - 1), STRIPE_BODY),
        False,
    ),
    "no v1 entry": (lambda ts: (f"t={ts}", STRIPE_BODY), False),
    "no timestamp": (lambda ts: (stripe_v1(STRIPE_SECRET, ts), STRIPE_BODY), False),
    "v1 not hex": (lambda ts: (f"t={ts},v1=zz", STRIPE_BODY), False),
    "v1 in upper-case hex": (
        lambda ts: (f"t={ts},v1=" + stripe_v1(STRIPE_SECRET, ts)[3:].upper(), STRIPE_BODY),
        False,
    ),
    "empty": (lambda ts: ("", STRIPE_BODY), False),
}


@pytest.mark.parametrize(("case", "valid"), STRIPE_CASES.values(), ids=STRIPE_CASES)
def test_stripe_we_accept_exactly_what_stripes_construct_event_accepts(
    case: Case, valid: bool
) -> None:
    # Built now: Stripe's library reads the real clock, and the suite may have run for minutes.
    now = time.time()
    header, body = case(int(now))
    assert stripe_accepts(header, body) is valid
    assert we_accept_stripe(header, body, now) is valid


def test_stripe_our_signer_writes_what_stripes_library_writes() -> None:
    ts = int(time.time())
    assert sign_stripe(STRIPE_SECRET, ts, STRIPE_BODY) == stripe_header(STRIPE_SECRET, ts)


def test_stripe_two_secrets_held_while_rolling_accept_either_signer() -> None:
    both = (STRIPE_SECRET, STRIPE_OLD_SECRET)
    now = time.time()
    for secret in both:
        assert we_accept_stripe(stripe_header(secret, int(now)), STRIPE_BODY, now, secrets=both)


def test_stripe_a_timestamp_far_in_the_future_is_refused_although_stripes_library_takes_it() -> (
    None
):
    # Stripe's library only refuses old timestamps; a clock 6 minutes ahead is refused here
    # as well, so that a captured request cannot be pre-dated to outlive the window.
    now = time.time()
    header = stripe_header(STRIPE_SECRET, int(now) + 360)
    assert stripe_accepts(header)
    assert not we_accept_stripe(header, STRIPE_BODY, now)


def test_stripe_the_event_id_in_the_body_is_the_delivery_id() -> None:
    headers = {"Stripe-Signature": stripe_header(STRIPE_SECRET, int(NOW))}
    verified = check_request([STRIPE_SECRET], headers, STRIPE_BODY, now=NOW)
    assert (verified.scheme, verified.message_id) == ("stripe", "evt_1Nq2")


def test_stripe_refusals_name_the_header_but_never_the_secret_or_the_signature() -> None:
    header = stripe_header(STRIPE_OLD_SECRET, int(NOW))
    with pytest.raises(SignatureError) as caught:
        check_request([STRIPE_SECRET], {"Stripe-Signature": header}, STRIPE_BODY, now=NOW)
    message = str(caught.value)
    assert "Stripe-Signature" in message
    expected = sign_stripe(STRIPE_SECRET, int(NOW), STRIPE_BODY).partition("v1=")[2]
    for leak in (STRIPE_SECRET, STRIPE_SECRET.removeprefix("whsec_"), expected):
        assert leak not in message


# -- Slack -------------------------------------------------------------------------------------

# The worked example of docs.slack.dev/authentication/verifying-requests-from-slack.
SLACK_DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_DOC_TIMESTAMP = 1531420618
SLACK_DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

SLACK_SECRET = "0d5ea1c4e7b2f9a83c6d1e0f2a4b7c9e"
SLACK_BODY = json.dumps(
    {"type": "event_callback", "event_id": "Ev08MFMKH6", "event": {"type": "app_mention"}}
).encode()


class FixedClock(Clock):
    """slack_sdk's clock, stopped at one instant."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def slack_signature(secret: str, timestamp: int | str, body: bytes = SLACK_BODY) -> str:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    assert signature is not None
    return signature


def slack_accepts(timestamp: str, signature: str, body: bytes, secret: str, now: float) -> bool:
    try:
        return SignatureVerifier(secret, FixedClock(now)).is_valid(body, timestamp, signature)
    except ValueError:  # the SDK cannot read such a timestamp at all
        return False


def we_accept_slack(timestamp: str, signature: str, body: bytes, secret: str, now: float) -> bool:
    headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}
    return accepted(lambda: check_request([secret], headers, body, accepted=["slack"], now=now))


def test_slack_documented_example_is_what_slack_sdk_and_we_compute_and_accept() -> None:
    assert slack_signature(SLACK_DOC_SECRET, SLACK_DOC_TIMESTAMP, SLACK_DOC_BODY) == (
        SLACK_DOC_SIGNATURE
    )
    assert sign_slack(SLACK_DOC_SECRET, SLACK_DOC_TIMESTAMP, SLACK_DOC_BODY) == SLACK_DOC_SIGNATURE
    args = (str(SLACK_DOC_TIMESTAMP), SLACK_DOC_SIGNATURE, SLACK_DOC_BODY, SLACK_DOC_SECRET)
    assert slack_accepts(*args, now=SLACK_DOC_TIMESTAMP + 60)
    assert we_accept_slack(*args, now=SLACK_DOC_TIMESTAMP + 60)


TS = int(NOW)
SIG = slack_signature(SLACK_SECRET, TS)
SLACK_CASES = {
    "valid": (str(TS), SIG, SLACK_BODY, NOW, True),
    "exactly 300 s old": (str(TS), SIG, SLACK_BODY, TS + 300, True),
    "301 s old": (str(TS), SIG, SLACK_BODY, TS + 301, False),
    "301 s ahead": (str(TS), SIG, SLACK_BODY, TS - 301, False),
    "tampered body": (str(TS), SIG, SLACK_BODY + b" ", NOW, False),
    "wrong secret": (str(TS), slack_signature(SLACK_DOC_SECRET, TS), SLACK_BODY, NOW, False),
    "signed for another timestamp": (str(TS + 1), SIG, SLACK_BODY, NOW, False),
    "upper-case hex": (str(TS), "v0=" + SIG[3:].upper(), SLACK_BODY, NOW, False),
    "no v0= prefix": (str(TS), SIG[3:], SLACK_BODY, NOW, False),
    "v1= prefix": (str(TS), "v1=" + SIG[3:], SLACK_BODY, NOW, False),
    "fractional timestamp": (f"{TS}.5", SIG, SLACK_BODY, NOW, False),
    "empty signature": (str(TS), "", SLACK_BODY, NOW, False),
}


@pytest.mark.parametrize(
    ("timestamp", "signature", "body", "now", "valid"), SLACK_CASES.values(), ids=SLACK_CASES
)
def test_slack_we_accept_exactly_what_slack_sdks_signature_verifier_accepts(
    timestamp: str, signature: str, body: bytes, now: float, valid: bool
) -> None:
    assert slack_accepts(timestamp, signature, body, SLACK_SECRET, now) is valid
    assert we_accept_slack(timestamp, signature, body, SLACK_SECRET, now) is valid


def slack_verified(body: bytes) -> tuple[str | None, str | None]:
    headers = {
        "X-Slack-Request-Timestamp": str(TS),
        "X-Slack-Signature": slack_signature(SLACK_SECRET, TS, body),
    }
    verified = check_request([SLACK_SECRET], headers, body, now=NOW)
    return verified.message_id, verified.challenge


def test_slack_an_events_api_callback_is_identified_by_its_event_id() -> None:
    assert slack_verified(SLACK_BODY) == ("Ev08MFMKH6", None)


def test_slack_url_verification_yields_its_challenge_and_no_delivery_id() -> None:
    body = json.dumps(
        {
            "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    ).encode()
    assert slack_verified(body) == (None, "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")


def test_slack_a_form_post_without_an_id_is_identified_by_its_signature() -> None:
    body = b"command=%2Fdeploy&text=now"
    first, _ = slack_verified(body)
    assert first is not None and first.startswith("slack-signature:")
    assert SLACK_SECRET not in first
    assert slack_verified(body + b"!")[0] != first


# -- Shopify -----------------------------------------------------------------------------------

# Shopify's own libraries test webhooks against HMACs they compute at run time, so the fixed
# example comes from bold-commerce/go-shopify (oauth_test.go, TestVerifyWebhookRequest and
# ...Verbose): app secret "hush", the body its client sends for the message (JSON-encoded, so
# in quotes), and the X-Shopify-Hmac-Sha256 it expects; plus the hex it reports for a body
# that must not match. https://github.com/bold-commerce/go-shopify
SHOPIFY_VECTOR_SECRET = "hush"
SHOPIFY_VECTOR_BODY = b'"my secret message"'
SHOPIFY_VECTOR_HMAC = "hMTq0K2x7oyOjoBwGYeTj5oxfnaVYXzbanUG9aajpKI="
SHOPIFY_VECTOR_OTHER_BODY = b'"my invalid message"'
SHOPIFY_VECTOR_OTHER_HEX = "ac3560a67dd9ed3f46cf1807856b78f27c9543b5ae98f5292d8eccf6252254f0"


def we_accept_shopify(hmac_header: str, body: bytes, secret: str = SHOPIFY_VECTOR_SECRET) -> bool:
    headers = {"X-Shopify-Hmac-Sha256": hmac_header, "X-Shopify-Webhook-Id": "b54557e4"}
    return accepted(lambda: check_request([secret], headers, body, accepted=["shopify"]))


def test_shopify_published_example_is_what_we_compute_and_accept() -> None:
    assert sign_shopify(SHOPIFY_VECTOR_SECRET, SHOPIFY_VECTOR_BODY) == SHOPIFY_VECTOR_HMAC
    assert we_accept_shopify(SHOPIFY_VECTOR_HMAC, SHOPIFY_VECTOR_BODY)
    other = base64.b64decode(sign_shopify(SHOPIFY_VECTOR_SECRET, SHOPIFY_VECTOR_OTHER_BODY))
    assert other.hex() == SHOPIFY_VECTOR_OTHER_HEX


@pytest.mark.parametrize(
    ("hmac_header", "body"),
    [
        (SHOPIFY_VECTOR_HMAC, SHOPIFY_VECTOR_OTHER_BODY),  # the example's "invalid message"
        ("wronghash", SHOPIFY_VECTOR_BODY),
        ("YmxhaGJsYWgK", SHOPIFY_VECTOR_BODY),  # valid base64, too short
        (SHOPIFY_VECTOR_HMAC[:-1] + "thisiswaytoolong=", SHOPIFY_VECTOR_BODY),
        (SHOPIFY_VECTOR_HMAC.lower(), SHOPIFY_VECTOR_BODY),
        ("", SHOPIFY_VECTOR_BODY),
    ],
)
def test_shopify_refuses_what_the_published_example_refuses(hmac_header: str, body: bytes) -> None:
    assert not we_accept_shopify(hmac_header, body)


def test_shopify_wrong_secret_is_refused() -> None:
    assert not we_accept_shopify(SHOPIFY_VECTOR_HMAC, SHOPIFY_VECTOR_BODY, secret="hush!")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_shopify_a_second_implementation_openssl_agrees_on_a_realistic_body() -> None:
    body = json.dumps({"id": 820982911946154508, "email": "jon@example.com"}).encode()
    secret = "shpss_0123456789abcdef0123456789abcdef"
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", secret, "-binary"],
        input=body,
        capture_output=True,
        check=True,
    ).stdout
    assert sign_shopify(secret, body) == base64.b64encode(digest).decode()


def test_shopify_the_webhook_id_header_is_the_delivery_id() -> None:
    headers = {"X-Shopify-Hmac-Sha256": SHOPIFY_VECTOR_HMAC, "X-Shopify-Webhook-Id": " b54557e4 "}
    verified = check_request([SHOPIFY_VECTOR_SECRET], headers, SHOPIFY_VECTOR_BODY)
    assert (verified.scheme, verified.message_id) == ("shopify", "b54557e4")


# -- GitLab ------------------------------------------------------------------------------------

GITLAB_TOKEN = "glwt-8c1f3e6a2b9d4c7e"


def gitlab_headers(token: str = GITLAB_TOKEN, **extra: str) -> dict[str, str]:
    """The delivery headers GitLab documents (webhooks.md, "Delivery headers")."""
    return {
        "User-Agent": "GitLab/17.5.0",
        "X-Gitlab-Instance": "https://gitlab.com",
        "X-Gitlab-Webhook-UUID": "02affd2d-2cba-4033-917d-ec22d5dc4b38",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
        "Idempotency-Key": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f",
        "X-Gitlab-Token": token,
        **extra,
    }


def gitlab_id(headers: dict[str, str]) -> str | None:
    return check_request([GITLAB_TOKEN], headers, b'{"object_kind": "push"}').message_id


def test_gitlab_the_configured_token_is_accepted_and_idempotency_key_is_the_id() -> None:
    assert gitlab_id(gitlab_headers()) == "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"


def test_gitlab_before_idempotency_key_existed_the_event_uuid_is_the_id() -> None:
    headers = gitlab_headers()
    del headers["Idempotency-Key"]
    assert gitlab_id(headers) == "13792a34-cac6-4fda-95a8-c58e00a3954e"
    del headers["X-Gitlab-Event-UUID"]
    assert gitlab_id(headers) is None


@pytest.mark.parametrize(
    "token",
    [GITLAB_TOKEN + "x", GITLAB_TOKEN[:-1], GITLAB_TOKEN.upper(), "", " ", "glwt"],
    ids=["longer", "shorter", "upper-case", "empty", "blank", "prefix"],
)
def test_gitlab_any_other_token_is_refused_without_echoing_either(token: str) -> None:
    with pytest.raises(SignatureError) as caught:
        gitlab_id(gitlab_headers(token))
    message = str(caught.value)
    assert "X-Gitlab-Token" in message
    assert GITLAB_TOKEN not in message
    assert not token.strip() or token not in message


def test_gitlab_a_token_of_a_rotation_list_is_accepted() -> None:
    headers = gitlab_headers("old token with spaces")
    verified = check_request([GITLAB_TOKEN, "old token with spaces"], headers, b"{}")
    assert verified.scheme == "gitlab"
