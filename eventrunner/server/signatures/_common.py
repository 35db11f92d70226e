"""Helpers every signature scheme shares: header lookup, the replay window, constant-time matching.

Error messages name headers and problems, never a secret, an expected signature or a token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eventrunner.core.errors import SignatureError

TOLERANCE = 300.0  # seconds: the replay window of every timestamped scheme (5 minutes)


@dataclass(frozen=True)
class Verified:
    """What a verified delivery tells the intake: its scheme, its id, and a challenge to answer.

    `message_id` de-duplicates deliveries (None when the sender gives none); `challenge` is set
    only for a handshake that must be answered instead of stored (Slack's URL verification).
    """

    scheme: str
    message_id: str | None
    challenge: str | None = None


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names in lower case: HTTP header names are case-insensitive."""
    return {key.lower(): value for key, value in headers.items()}


def require(headers: Mapping[str, str], name: str, label: str | None = None) -> str:
    """The stripped value of a (lower-case) header; SignatureError when missing or empty."""
    value = headers.get(name, "").strip()
    if not value:
        raise SignatureError(f"missing or empty {label or name} header")
    return value


def check_timestamp(label: str, stamp: str, now: float | None, tolerance: float) -> None:
    """Refuse a Unix-seconds timestamp that is not digits or lies outside `tolerance` of now."""
    if not stamp.isascii() or not stamp.isdigit():
        raise SignatureError(f"{label} is not an integer number of seconds")
    current = time.time() if now is None else now
    skew = int(stamp) - current
    if abs(skew) > tolerance:
        direction = "in the future" if skew > 0 else "too old"
        raise SignatureError(
            f"{label} is {direction} ({abs(skew):.0f}s outside, tolerance {tolerance:.0f}s)"
        )


def any_match(expected: Iterable[bytes], given: Iterable[bytes]) -> bool:
    """Whether any expected digest equals any given one, comparing every pair in constant time.

    No early exit: how long the check takes says nothing about which secret or entry matched.
    """
    candidates = list(given)
    matched = False
    for digest in expected:
        for candidate in candidates:
            matched |= hmac.compare_digest(digest, candidate)
    return matched


def replay_id(scheme: str, signature: bytes) -> str:
    """A de-duplication id for a signed-timestamp delivery whose sender gives no id.

    The signature covers the timestamp and the body, so the same signature again is the same
    request replayed: within the replay window it is a duplicate, after it the timestamp fails.
    """
    return f"{scheme}-signature:{hashlib.sha256(signature).hexdigest()[:32]}"
