"""Webhook signature checks, one module per sender's scheme, each chosen by its own headers.

Pure functions over headers and body bytes; no HTTP framework. Every scheme compares in
constant time on the raw body, and its error messages name headers and problems, never the
secret, the expected signature or a token.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from eventrunner.core.errors import SignatureError

from . import github, gitlab, shopify, slack, standard, stripe
from ._common import Verified, lower
from .github import sign_github, verify_github
from .shopify import sign_shopify
from .slack import sign_slack
from .standard import STANDARD_TOLERANCE, sign_standard_webhook, verify_standard_webhook
from .stripe import sign_stripe

__all__ = [
    "SCHEMES",
    "STANDARD_TOLERANCE",
    "Scheme",
    "Verified",
    "check_request",
    "sign_github",
    "sign_shopify",
    "sign_slack",
    "sign_standard_webhook",
    "sign_stripe",
    "verify_github",
    "verify_request",
    "verify_standard_webhook",
]

Check = Callable[[Sequence[str], Mapping[str, str], bytes, float | None], Verified]


@dataclass(frozen=True)
class Scheme:
    """A signature scheme: its config name, the headers that identify it, and its check."""

    name: str
    marks: tuple[str, ...]  # lower-case header names; any one present selects the scheme
    check: Check


# In the order of eventrunner.workspace.settings.WEBHOOK_SCHEMES, which names the same schemes.
SCHEMES: dict[str, Scheme] = {
    mod.NAME: Scheme(mod.NAME, mod.MARKS, mod.check)
    for mod in (standard, github, stripe, slack, shopify, gitlab)
}


def check_request(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    accepted: Collection[str] | None = None,
    now: float | None = None,
) -> Verified:
    """Verify the one scheme whose headers the request carries, against any of `secrets`.

    `accepted` names the schemes a source takes (None: all). Headers of a scheme outside it,
    or of several schemes at once, are refused rather than ignored: a delivery is one sender's.
    """
    if not secrets:
        raise SignatureError("no webhook secret configured")
    lowered = lower(headers)
    present = [s for s in SCHEMES.values() if any(mark in lowered for mark in s.marks)]
    allowed = f" (this source accepts {', '.join(accepted)})" if accepted is not None else ""
    if not present:
        raise SignatureError(f"missing signature headers{allowed}")
    for scheme in present:
        if accepted is not None and scheme.name not in accepted:
            raise SignatureError(f"{scheme.name} signature headers are not accepted{allowed}")
    if len(present) > 1:
        names = ", ".join(s.name for s in present)
        raise SignatureError(f"headers of several signature schemes ({names}); send one")
    return present[0].check(secrets, lowered, body, now)


def verify_request(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> str | None:
    """Check whichever scheme the headers carry; return the id for de-duplication (or None)."""
    return check_request(secrets, headers, body, now=now).message_id
