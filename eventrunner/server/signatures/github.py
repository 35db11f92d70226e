"""GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`; id `X-GitHub-Delivery`.

GitHub signs no timestamp, so there is no replay window; the secret is free text.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

from ._common import Verified, any_match, lower, require

NAME = "github"
# X-GitHub-Event alone (a hook whose secret was left empty on GitHub) still names the scheme,
# so the answer says which header is missing.
MARKS = ("x-hub-signature-256", "x-github-event", "x-github-delivery")
_PREFIX = "sha256="


def sign_github(secret: str, body: bytes) -> str:
    """Return the `X-Hub-Signature-256` value ("sha256=<hex>") for a body."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github(secret: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """Check GitHub's `X-Hub-Signature-256`; return `X-GitHub-Delivery` if present."""
    return check([secret], lower(headers), body, None).message_id


def check(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None
) -> Verified:
    """Verify against any of `secrets` (lower-case headers); the id is `X-GitHub-Delivery`."""
    header = require(headers, "x-hub-signature-256", "X-Hub-Signature-256")
    if not header.startswith(_PREFIX):
        raise SignatureError("X-Hub-Signature-256 does not start with sha256=")
    given = header[len(_PREFIX) :].lower().encode("ascii", "replace")
    expected = (sign_github(secret, body)[len(_PREFIX) :].encode("ascii") for secret in secrets)
    if not any_match(expected, [given]):
        raise SignatureError("X-Hub-Signature-256 does not match")
    return Verified(NAME, headers.get("x-github-delivery") or None)
