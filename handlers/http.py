"""Stock handler `http`: send the input to a URL kept in a secret; record status and response.

params: `url_secret` (name of the environment variable holding the URL), optional `method`
("POST"), `body` (a text template, or a table rendered and sent as JSON / a form), `form`
(send a form instead of JSON), `headers` (a table) and `timeout` (seconds or "30s").
Without `body` the input is sent: as JSON when it parses as JSON, else as text.
The URL is a secret: it never appears in an error, an output or a log line.
"""

# This module is eventrunner_handlers.http: absolute imports of `http` reach the standard library.
from __future__ import annotations

import email.utils
import json as _json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import Message
from http.client import HTTPException
from pathlib import Path
from typing import Any

from eventrunner.core.errors import EventRunnerError, PermanentError, RetryLater
from eventrunner.run.context import Context

from ._common import (
    Value,
    context_values,
    duration_param,
    flag,
    input_paths,
    one_output,
    read_text,
    render,
    str_mapping,
)

WHAT = "http"
RESPONSE_CHARS = 2048
DEFAULT_TIMEOUT = 30.0
METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
HIDDEN = "<url from secret>"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
FORM = "application/x-www-form-urlencoded"


def http(ctx: Context, **inputs: Path) -> dict[str, Any]:
    """Send one request; 2xx gives {"status", "response"}, 429/5xx retry later, 4xx is permanent."""
    secret = ctx.params.get("url_secret")
    if not isinstance(secret, str) or not secret:
        raise PermanentError(
            f"{WHAT}: params.url_secret must name the environment variable with the URL"
        )
    one_output(ctx, WHAT)
    url = _url(ctx, secret)
    hide = _Redactor(url)
    method = str(ctx.params.get("method", "POST")).upper()
    if method not in METHODS:
        raise PermanentError(
            f"{WHAT}: params.method must be one of {', '.join(METHODS)}, not {method!r}"
        )
    timeout = duration_param(ctx, "timeout", DEFAULT_TIMEOUT, WHAT)
    data, content_type = _payload(ctx, inputs)
    given = str_mapping(ctx, "headers", WHAT)
    defaults = {
        "User-Agent": "eventrunner",
        "Content-Type": content_type if data is not None else "",
    }
    taken = {k.lower() for k in given}
    headers = {k: v for k, v in defaults.items() if v and k.lower() not in taken} | given
    try:
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, text = resp.status, _read(resp)
    except urllib.error.HTTPError as exc:
        raise _status_error(exc.code, exc.headers, hide(_read(exc))) from None
    except (OSError, HTTPException) as exc:  # URLError, refused, reset, timed out, TLS, bad status
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RetryLater(
            f"{WHAT}: request failed: {hide(str(reason) or type(reason).__name__)}"
        ) from None
    except Exception as exc:  # http.client and header checks may quote the URL: never re-raise them
        raise PermanentError(
            f"{WHAT}: cannot send the request: {type(exc).__name__}: {hide(str(exc))}"
        ) from None
    return {"status": status, "response": hide(text)}


def _url(ctx: Context, secret: str) -> str:
    """The URL from the secret; PermanentError (never quoting it) unless it is http(s)."""
    url = ctx.secret(secret)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a malformed port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"{WHAT}: the value of secret {secret} is not an http(s) URL")
    return url


def _payload(ctx: Context, inputs: Mapping[str, Path]) -> tuple[bytes | None, str]:
    """Request body and its content type, from params.body or else the input(s)."""
    form = flag(ctx, "form", False, WHAT)
    body = ctx.params.get("body")
    if isinstance(body, str):
        text = render(body, _template_values(ctx, inputs), str, f"{WHAT}: params.body")
        return text.encode(), FORM if form else TEXT
    if isinstance(body, dict):
        return _encode(_render_tree(body, _template_values(ctx, inputs)), form)
    if body is not None:
        raise PermanentError(f"{WHAT}: params.body must be a text template or a table")
    if not inputs:
        return None, ""
    if len(inputs) > 1:  # several inputs: one JSON object keyed by input name
        return _encode({name: _content(name, value) for name, value in inputs.items()}, form)
    name, value = next(iter(inputs.items()))
    if isinstance(value, dict):  # a fan-in input: one JSON object keyed by member id
        return _encode(_content(name, value), form)
    raw = input_paths(name, value, WHAT)[0].read_bytes()
    try:
        parsed = _json.loads(raw)
    except ValueError:
        if form:
            raise PermanentError(
                f"{WHAT}: form = true needs a JSON object input; {name} is not JSON"
            ) from None
        return raw, TEXT
    return _encode(parsed, form) if form else (raw, JSON)


def _content(name: str, value: object) -> Any:
    if isinstance(value, dict):
        return {member: _content(name, v) for member, v in sorted(value.items())}
    text = read_text(name, input_paths(name, value, WHAT)[0], WHAT)
    try:
        return _json.loads(text)
    except ValueError:
        return text


def _encode(value: Any, form: bool) -> tuple[bytes, str]:
    if not form:
        return _json.dumps(value, ensure_ascii=False).encode(), JSON
    if not isinstance(value, dict):
        raise PermanentError(
            f"{WHAT}: form = true needs an object of fields, not a {type(value).__name__}"
        )
    fields = {k: v if isinstance(v, str) else _json.dumps(v) for k, v in value.items()}
    return urllib.parse.urlencode(fields).encode(), FORM


def _template_values(ctx: Context, inputs: Mapping[str, Path]) -> dict[str, Value]:
    values = context_values(ctx)
    for name, value in inputs.items():
        texts = [read_text(name, p, WHAT) for p in input_paths(name, value, WHAT)]
        values[f"input.{name}"] = "\n".join(texts)
    return values


def _render_tree(node: Any, values: Mapping[str, Value]) -> Any:
    """Render every string of a params.body table; JSON encoding then quotes them correctly."""
    if isinstance(node, str):
        return render(node, values, lambda v: v, f"{WHAT}: params.body")
    if isinstance(node, dict):
        return {k: _render_tree(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_tree(v, values) for v in node]
    return node


def _read(resp: Any) -> str:
    try:
        data: bytes = resp.read(RESPONSE_CHARS * 4)
    except (OSError, ValueError, AttributeError, HTTPException):
        return ""
    return data.decode("utf-8", errors="replace")[:RESPONSE_CHARS]


def _status_error(code: int, headers: Message | None, text: str) -> EventRunnerError:
    snippet = " ".join(text.split())[:300]
    detail = f": {snippet}" if snippet else ""
    if code == 429 or code >= 500:
        after = retry_after(headers.get("Retry-After") if headers is not None else None)
        when = f"; retry after {after:g}s" if after is not None else ""
        return RetryLater(f"{WHAT}: HTTP {code}{when}{detail}", retry_after=after)
    return PermanentError(f"{WHAT}: HTTP {code}{detail}")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Redactor:
    """Replace the URL and its telling parts (path, query, credentials) in text we record."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        pieces = {url, url.rstrip("/"), parts.netloc, parts.hostname or "", parts.query}
        pieces |= {parts.username or "", parts.password or ""}
        path_query = parts.path + (f"?{parts.query}" if parts.query else "")
        pieces |= {path_query, parts.path, urllib.parse.unquote(parts.path)}
        # Longest first, so a piece inside another is not replaced half-way; "/" alone is no secret.
        self.pieces = sorted((p for p in pieces if len(p) > 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for piece in self.pieces:
            text = text.replace(piece, HIDDEN)
        return text
