"""Post one message to a Discord-compatible webhook, mapping HTTP statuses to retry decisions.

The stock `http` handler sends an input file as it is; here the message is built from two
inputs, so the request is made with urllib and only the stock Retry-After parser is reused.
The webhook URL carries a token: it never appears in an error message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any

from eventrunner_handlers.http import retry_after

from eventrunner import PermanentError, RetryLater

USER_AGENT = "eventrunner-news (https://github.com/eventrunner/eventrunner, 0.1)"


def post_message(url: str, message: dict[str, Any], timeout: float = 30.0) -> int:
    """POST `message` as JSON; the 2xx status, RetryLater for 429/5xx/network, else PermanentError."""
    request = urllib.request.Request(
        url,
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(2048).decode("utf-8", errors="replace")
            header = exc.headers.get("Retry-After") if exc.headers is not None else None
            raise _status_error(exc.code, header, body) from None
    except (
        OSError,
        HTTPException,
    ) as exc:  # refused, reset, timed out, DNS, TLS: the next attempt may work
        raise RetryLater(f"discord: request failed: {type(exc).__name__}") from None
    except ValueError:  # urllib quotes the URL in these messages: never repeat it
        raise PermanentError("discord: the webhook URL is not a valid http(s) URL") from None


def _status_error(code: int, header: str | None, body: str) -> Exception:
    snippet = " ".join(body.split())[:200]
    if code == 429 or code >= 500:
        # Discord answers 429 with a Retry-After header and {"retry_after": seconds} in the body.
        after = retry_after(header)
        if after is None and code == 429:
            after = _body_retry_after(body)
        when = f"; retry after {after:g}s" if after is not None else ""
        return RetryLater(f"discord: HTTP {code}{when}: {snippet}", retry_after=after)
    return PermanentError(f"discord: HTTP {code}: {snippet}")


def _body_retry_after(body: str) -> float | None:
    try:
        value = json.loads(body).get("retry_after")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None
