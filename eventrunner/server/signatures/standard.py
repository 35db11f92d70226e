"""Standard Webhooks (Svix and the senders built on it): `webhook-id`, `-timestamp`, `-signature`.

`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, several space-separated
entries while the sender rotates its secret; the secret is `whsec_<base64 key>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

from ._common import TOLERANCE, Verified, any_match, check_timestamp, lower, require

NAME = "standard"
MARKS = ("webhook-id", "webhook-timestamp", "webhook-signature")
STANDARD_TOLERANCE = TOLERANCE
_SECRET_PREFIX = "whsec_"


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` entry ("v1,<base64>") for one message."""
    digest = _digest(_key(secret), msg_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_standard_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = STANDARD_TOLERANCE,
) -> str:
    """Check a Standard Webhooks signature; return the `webhook-id`."""
    return _verify([secret], lower(headers), body, now, tolerance)


def check(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None
) -> Verified:
    """Verify against any of `secrets` (lower-case headers); the id is `webhook-id`."""
    return Verified(NAME, _verify(secrets, headers, body, now, STANDARD_TOLERANCE))


def _key(secret: str) -> bytes:
    text = secret.strip()
    if text.startswith(_SECRET_PREFIX):
        text = text[len(_SECRET_PREFIX) :]
    try:
        # Some providers hand out unpadded base64; pad it back.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("webhook secret is not whsec_<base64>") from None
    if not key:
        raise SignatureError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _v1_signatures(header: str) -> list[bytes]:
    found: list[bytes] = []
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue  # one garbled entry must not hide a good one next to it
    return found


def _verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float | None,
    tolerance: float,
) -> str:
    msg_id = require(headers, "webhook-id")
    stamp = require(headers, "webhook-timestamp")
    header = require(headers, "webhook-signature")
    check_timestamp("webhook-timestamp", stamp, now, tolerance)
    given = _v1_signatures(header)
    if not given:
        raise SignatureError("webhook-signature has no well-formed v1 entry")
    expected = (_digest(_key(secret), msg_id, stamp, body) for secret in secrets)
    if not any_match(expected, given):
        raise SignatureError(f"webhook-signature does not match ({len(given)} v1 entries checked)")
    return msg_id
