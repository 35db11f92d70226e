"""GitLab: `X-Gitlab-Token: <secret>`, the secret itself, compared in constant time.

The token proves only that the sender knows the secret (anyone who reads one request does):
use HTTPS. There is no signature over the body and no timestamp. De-duplication uses
`Idempotency-Key` (GitLab 17.4+, the same on every retry of one event) or else
`X-Gitlab-Event-UUID` (14.8+; webhooks triggered by an earlier webhook share that one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

from ._common import Verified, any_match, require

NAME = "gitlab"
MARKS = ("x-gitlab-token", "x-gitlab-event", "x-gitlab-event-uuid")
_HEADER = "X-Gitlab-Token"


def check(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None
) -> Verified:
    """Compare the token with each of `secrets` (lower-case headers); the id as above."""
    given = require(headers, "x-gitlab-token", _HEADER)
    # Digests of both sides: equal lengths, so the comparison time says nothing of the length.
    expected = (_digest(secret.strip()) for secret in secrets)
    if not any_match(expected, [_digest(given)]):
        raise SignatureError(f"{_HEADER} does not match")
    key = headers.get("idempotency-key", "").strip() or headers.get("x-gitlab-event-uuid", "")
    return Verified(NAME, key.strip() or None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
