"""Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>`; id `X-Shopify-Webhook-Id`.

The secret is the app's client secret (or the store's webhook signing key for webhooks made
in the admin). Shopify signs no timestamp, so there is no replay window; a retry re-sends the
same `X-Shopify-Webhook-Id`, which is the de-duplication key. That header is not signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from eventrunner.core.errors import SignatureError

from ._common import Verified, any_match, require

NAME = "shopify"
MARKS = ("x-shopify-hmac-sha256", "x-shopify-webhook-id", "x-shopify-topic")
_HEADER = "X-Shopify-Hmac-Sha256"


def sign_shopify(secret: str, body: bytes) -> str:
    """Return the `X-Shopify-Hmac-Sha256` value (base64) for a body."""
    return base64.b64encode(_digest(secret, body)).decode("ascii")


def check(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None
) -> Verified:
    """Verify against any of `secrets` (lower-case headers); the id is the webhook id."""
    header = require(headers, "x-shopify-hmac-sha256", _HEADER)
    try:
        given = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{_HEADER} is not base64") from None
    if not any_match((_digest(secret, body) for secret in secrets), [given]):
        raise SignatureError(f"{_HEADER} does not match")
    return Verified(NAME, headers.get("x-shopify-webhook-id", "").strip() or None)


def _digest(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()
