"""Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<ts>:<body>">`, `X-Slack-Request-Timestamp`.

The secret is the app's Signing Secret. Slack names no delivery in a header; an Events API
callback carries `event_id` in its JSON body, the same on every retry, and that is the
de-duplication key. Slash commands and interactivity (form posts) carry no id: the signature
itself is the key, so the same request replayed inside the 5-minute window is a duplicate.
Slack's URL-verification handshake is signed too, and is answered with its challenge.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

from ._common import TOLERANCE, Verified, any_match, check_timestamp, replay_id, require
from ._json import parse_object

NAME = "slack"
MARKS = ("x-slack-signature", "x-slack-request-timestamp")
_SIGNATURE, _TIMESTAMP = "X-Slack-Signature", "X-Slack-Request-Timestamp"
_VERSION = "v0="


def sign_slack(secret: str, timestamp: int, body: bytes) -> str:
    """Return the `X-Slack-Signature` value ("v0=<hex>") for one request."""
    return _VERSION + _digest(secret, str(timestamp), body).hex()


def check(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None
) -> Verified:
    """Verify against any of `secrets` (lower-case headers); the id is `event_id` if any."""
    stamp = require(headers, "x-slack-request-timestamp", _TIMESTAMP)
    header = require(headers, "x-slack-signature", _SIGNATURE)
    check_timestamp(_TIMESTAMP, stamp, now, TOLERANCE)
    if not header.startswith(_VERSION):
        raise SignatureError(f"{_SIGNATURE} does not start with {_VERSION}")
    # Compared as text, lower-case hex as Slack writes it (as Slack's own SDK compares).
    given = header.encode("ascii", "replace")
    expected = ((_VERSION + _digest(secret, stamp, body).hex()).encode() for secret in secrets)
    if not any_match(expected, [given]):
        raise SignatureError(f"{_SIGNATURE} does not match")
    return _delivery(body, given)


def _digest(secret: str, timestamp: str, body: bytes) -> bytes:
    message = f"v0:{timestamp}:".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def _delivery(body: bytes, signature: bytes) -> Verified:
    """What a verified request is: a handshake to answer, an event with an id, or neither."""
    payload = parse_object(body) or {}
    kind = payload.get("type")
    challenge = payload.get("challenge")
    if kind == "url_verification" and isinstance(challenge, str):
        return Verified(NAME, None, challenge=challenge)
    event_id = payload.get("event_id")
    if kind == "event_callback" and isinstance(event_id, str) and event_id:
        return Verified(NAME, event_id)
    return Verified(NAME, replay_id(NAME, signature))
