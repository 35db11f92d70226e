"""Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 of "<ts>.<body>".

The secret (`whsec_...`) is the HMAC key as it stands, unlike Standard Webhooks' base64 key.
While an endpoint's secret is being rolled Stripe signs with the old and the new one, one `v1`
entry each; `v0` entries (test-mode legacy) are ignored. Stripe names no delivery in a header:
the event's `id` in the body is the de-duplication key (a retry re-sends the same event).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

from ._common import TOLERANCE, Verified, any_match, check_timestamp, replay_id, require
from ._json import string_field

NAME = "stripe"
MARKS = ("stripe-signature",)
_HEADER = "Stripe-Signature"


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """Return the `Stripe-Signature` value ("t=<ts>,v1=<hex>") for one delivery."""
    return f"t={timestamp},v1={_digest(secret, str(timestamp), body).hex()}"


def check(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None
) -> Verified:
    """Verify against any of `secrets` (lower-case headers); the id is the event's `id`."""
    stamp, given = _parse(require(headers, "stripe-signature", _HEADER))
    check_timestamp(f"{_HEADER} t=", stamp, now, TOLERANCE)
    if not given:
        raise SignatureError(f"{_HEADER} has no v1 entry")
    expected = (_digest(secret, stamp, body).hex().encode() for secret in secrets)
    if not any_match(expected, given):
        raise SignatureError(f"{_HEADER} does not match ({len(given)} v1 entries checked)")
    return Verified(NAME, string_field(body, "id") or replay_id(NAME, b"".join(given)))


def _digest(secret: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).digest()


def _parse(header: str) -> tuple[str, list[bytes]]:
    """The timestamp (the first `t`, as Stripe's libraries read it) and the v1 digests."""
    stamp: str | None = None
    given: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and stamp is None:
            stamp = value.strip()
        elif key == "v1":
            # Lower-case hex as Stripe writes it, compared as text (as Stripe's libraries do).
            given.append(value.strip().encode("ascii", "replace"))
    if stamp is None:
        raise SignatureError(f"{_HEADER} has no t= timestamp")
    return stamp, given
