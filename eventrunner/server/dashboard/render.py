"""Templates (Jinja2, autoescaped), formatting helpers, HTML error pages and static files."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web

from eventrunner.core.errors import EventRunnerError, UnknownName, UsageError
from eventrunner.core.staleness import STATES
from eventrunner.server.dashboard.security import CSRF_FIELD, SESSION, SESSIONS
from eventrunner.state.hashing import hash_bytes

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).resolve().parent.parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fmt_time(epoch: float | None) -> str:
    """A local ISO time to the second ("2026-11-25 14:03:12"); "-" for none."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso(epoch: float | None) -> str:
    """Machine-readable time for <time datetime=...>."""
    return datetime.fromtimestamp(epoch or 0).astimezone().isoformat(timespec="seconds")


def relative(epoch: float | None, now: float | None = None) -> str:
    """ "in 12 s", "3 min ago"."""
    if not epoch:
        return ""
    delta = epoch - (now or time.time())
    n = abs(delta)
    if n < 1:
        text = "now"
        return text
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if n >= size:
            text = f"{int(n // size)} {unit}"
            break
    return f"in {text}" if delta > 0 else f"{text} ago"


def duration(seconds: float | None) -> str:
    """ "12 ms", "3.4 s", "30 s", "2 min 5 s", "1 h"."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    whole = int(seconds)
    for size, unit, small, small_unit in ((3600, "h", 60, "min"), (60, "min", 1, "s")):
        if whole >= size:
            rest = (whole % size) // small
            return f"{whole // size} {unit}" + (f" {rest} {small_unit}" if rest else "")
    return f"{whole} s"


def url_part(value: str) -> str:
    """One path segment, percent-encoded (entity ids may hold any character but '/')."""
    return quote(value, safe="")


def query(**params: Any) -> str:
    """ "?a=1&b=2" from the non-empty params (or "")."""
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(clean) if clean else ""


class Static:
    """The vendored and own assets: served with a content hash in the URL, cached for good."""

    def __init__(self, folder: Path = STATIC) -> None:
        self.files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.hashes = {name: hash_bytes(data)[:12] for name, data in self.files.items()}

    def url(self, name: str) -> str:
        """The URL of an asset, versioned by content."""
        return f"/static/{name}?v={self.hashes[name]}"

    async def handle(self, request: web.Request) -> web.Response:
        """GET /static/{name}: only files of the folder, never a path outside it."""
        name = request.match_info["name"]
        data = self.files.get(name)
        if data is None:
            raise web.HTTPNotFound(reason="no such asset")
        versioned = request.query.get("v") == self.hashes[name]
        cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
        return web.Response(
            body=data,
            content_type=TYPES.get(Path(name).suffix, "application/octet-stream"),
            headers={"Cache-Control": cache},
        )


def environment(static: Static) -> jinja2.Environment:
    """The template environment: autoescape everywhere, undefined names are errors. Built by
    the first page (setup_dashboard keeps this as a cached call): jinja2 costs serve's start
    ~0.1 s of CPU otherwise."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        reason=reason_text,
        time=fmt_time,
        iso=iso,
        ago=relative,
        duration=duration,
        part=url_part,
        short=_short,
    )
    env.globals.update(static=static.url, query=query, STATES=STATES, csrf_field=CSRF_FIELD)
    return env


def _short(value: str | None, n: int = 12) -> str:
    return (value or "")[:n]


_EPOCH_RETRY = re.compile(r"; retry at \d+(\.\d+)?$")


def reason_text(message: str) -> str:
    """A reason's message without an epoch-seconds retry time (the page shows it as a time)."""
    return _EPOCH_RETRY.sub("", message)


ENV: web.AppKey[Callable[[], jinja2.Environment]] = web.AppKey("dashboard_env")
RECENT: web.AppKey[Any] = web.AppKey("dashboard_recent")  # live.Recent: the last events seen


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A page (or, for an htmx request naming a fragment, just that fragment)."""
    env = request.app[ENV]()
    session = request.get(SESSION)
    sessions = request.app[SESSIONS]
    base = {
        "csrf": sessions.csrf(session) if session is not None else "",
        "signed_in": bool(session and session.auth and sessions.token()),
        "path": request.path,
        "now": time.time(),
        "since": request.app[RECENT].seq if RECENT in request.app else 0,
    }
    html = env.get_template(template).render({**base, **context})
    return web.Response(
        text=html, content_type="text/html", status=status, headers={"Cache-Control": "no-store"}
    )


def page(handler: Page) -> Page:
    """Errors on a dashboard page answer an HTML page, not the API's JSON."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (UnknownName, web.HTTPNotFound) as exc:
            return _error(request, 404, _message(exc))
        except (UsageError, web.HTTPBadRequest) as exc:
            return _error(request, 400, _message(exc))
        except web.HTTPServiceUnavailable:
            resp = _error(request, 503, "the server is starting up: this page reloads itself")
            resp.headers["Retry-After"] = "1"
            resp.headers["Refresh"] = "1"
            return resp
        except EventRunnerError as exc:
            return _error(request, 500, str(exc))

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _message(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, web.HTTPException) else str(exc)


def _error(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message}, status=status)
