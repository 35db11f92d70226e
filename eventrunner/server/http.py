"""What every HTTP route module shares: the handler type, the one error shape, query numbers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from eventrunner.core.errors import UsageError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
    500: "internal",
    503: "unavailable",
}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The one error shape: {"error": {"code", "message"}}."""
    body = {"error": {"code": code or CODES.get(status, "error"), "message": message}}
    return web.json_response(body, status=status, headers=headers)


def int_param(request: web.Request, name: str, default: int | None) -> int | None:
    """A whole-number query parameter, or `default` when absent; 400 when not a number."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer") from None
    if value < 0:
        raise UsageError(f"{name} must not be negative")
    return value


class InvalidBody(Exception):
    """Raised when a request body fails its model's validation: answered 422 with the reasons."""


async def read_body(request: web.Request, model: str, timeout: float) -> Any:
    """The JSON body validated by server/models.py's `model`. That module and pydantic are
    imported by the first request with a body, not at start-up (~0.2 s of CPU)."""
    from pydantic import ValidationError

    from eventrunner.server import models

    try:
        async with asyncio.timeout(timeout):
            raw = await request.json() if request.can_read_body else {}
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="request body took too long") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError("body must be JSON") from None
    if not isinstance(raw, dict):
        raise UsageError("body must be a JSON object")
    try:
        return getattr(models, model).model_validate(raw)
    except ValidationError as exc:
        raise InvalidBody(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        ) from None
