"""Webhook signature checks: Standard Webhooks and GitHub's X-Hub-Signature-256, in constant time.

Pure functions over headers and body bytes; no HTTP framework. Error messages name the header
and the problem, never the secret or the expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

STANDARD_TOLERANCE = 300.0
_SECRET_PREFIX = "whsec_"
_GITHUB_PREFIX = "sha256="


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` entry ("v1,<base64>") for one message."""
    digest = _standard_digest(_standard_key(secret), msg_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_github(secret: str, body: bytes) -> str:
    """Return the `X-Hub-Signature-256` value ("sha256=<hex>") for a body."""
    return _GITHUB_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_standard_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = STANDARD_TOLERANCE,
) -> str:
    """Check a Standard Webhooks signature; return the `webhook-id`."""
    return _verify_standard([secret], _lower(headers), body, now, tolerance)


def verify_github(secret: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """Check GitHub's `X-Hub-Signature-256`; return `X-GitHub-Delivery` if present."""
    return _verify_github([secret], _lower(headers), body)


def verify_request(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> str | None:
    """Check whichever scheme the headers carry against any of `secrets` (rotation).

    Returns the message id used for de-duplication (None if the sender gave none).
    """
    if not secrets:
        raise SignatureError("no webhook secret configured")
    lowered = _lower(headers)
    if "webhook-signature" in lowered:
        return _verify_standard(secrets, lowered, body, now, STANDARD_TOLERANCE)
    if "x-hub-signature-256" in lowered:
        return _verify_github(secrets, lowered, body)
    raise SignatureError("missing signature headers")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _require(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise SignatureError(f"missing or empty {name} header")
    return value


def _standard_key(secret: str) -> bytes:
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


def _standard_digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
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


def _verify_standard(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float | None,
    tolerance: float,
) -> str:
    msg_id = _require(headers, "webhook-id")
    stamp = _require(headers, "webhook-timestamp")
    header = _require(headers, "webhook-signature")
    if not stamp.isascii() or not stamp.isdigit():
        raise SignatureError("webhook-timestamp is not an integer number of seconds")
    current = time.time() if now is None else now
    skew = int(stamp) - current
    if abs(skew) > tolerance:
        direction = "in the future" if skew > 0 else "too old"
        raise SignatureError(
            f"webhook-timestamp is {direction} ({abs(skew):.0f}s outside, tolerance {tolerance:.0f}s)"
        )
    given = _v1_signatures(header)
    if not given:
        raise SignatureError("webhook-signature has no well-formed v1 entry")
    matched = False
    for secret in secrets:
        expected = _standard_digest(_standard_key(secret), msg_id, stamp, body)
        for candidate in given:
            # Compare against every entry without stopping early: timing reveals nothing.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError(f"webhook-signature does not match ({len(given)} v1 entries checked)")
    return msg_id


def _verify_github(secrets: Sequence[str], headers: Mapping[str, str], body: bytes) -> str | None:
    header = _require(headers, "x-hub-signature-256")
    if not header.startswith(_GITHUB_PREFIX):
        raise SignatureError("X-Hub-Signature-256 does not start with sha256=")
    given = header[len(_GITHUB_PREFIX) :].lower().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        expected = sign_github(secret, body)[len(_GITHUB_PREFIX) :].encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("X-Hub-Signature-256 does not match")
    return headers.get("x-github-delivery") or None
