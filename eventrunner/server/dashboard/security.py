"""Dashboard sessions, CSRF and origin checks, login/logout, and the security headers.

Browsers cannot send a Bearer token with EventSource, and the token must never go in a URL:
with a token configured, /login exchanges it for an HttpOnly, SameSite=Strict session cookie
signed with HMAC-SHA256 (key: a random per-workspace key mixed with the token, so changing the
token signs everyone out). Every visitor gets a session, signed in or not, and every
dashboard POST must carry that session's CSRF token and come from this origin. A POST to any
route but webhook intake that names another origin is refused, and a session cookie never
authorises a POST to the JSON API (it needs the Bearer token): a page elsewhere cannot steer
the server through the visitor's browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from eventrunner.server.http import Handler, error_response
from eventrunner.server.keys import SESSION_OK

COOKIE = "er_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_MAX_AGE = 12 * 3600
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC = frozenset({"ui.login", "ui.login_post", "ui.static"})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class Session:
    """A visitor's session: an id (the CSRF token derives from it), signed in or not."""

    sid: str
    auth: bool
    expires: float


class Sessions:
    """Issues and checks signed session cookies and CSRF tokens."""

    def __init__(self, state_dir: Path, token_env: str | None) -> None:
        self.token_env = token_env
        self._secret = _load_key(state_dir / "dashboard.key")

    def token(self) -> str | None:
        """The management token now (read each time, like the API's check: rotation works)."""
        return (os.environ.get(self.token_env) or None) if self.token_env else None

    def _key(self) -> bytes:
        return hmac.new(self._secret, (self.token() or "").encode(), hashlib.sha256).digest()

    def issue(self, auth: bool) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), auth, time.time() + SESSION_MAX_AGE)
        payload = base64.urlsafe_b64encode(
            json.dumps({"sid": session.sid, "auth": auth, "exp": int(session.expires)}).encode()
        ).decode()
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None if missing, forged, expired or signed by an
        old token."""
        if not cookie or "." not in cookie:
            return None
        payload, _, sig = cookie.rpartition(".")
        if not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload.encode()))
            session = Session(str(data["sid"]), bool(data["auth"]), float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session (forms carry it; POSTs must send it back)."""
        return hmac.new(self._key(), b"csrf:" + session.sid.encode(), hashlib.sha256).hexdigest()

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key(), payload.encode(), hashlib.sha256).hexdigest()


def _load_key(path: Path) -> bytes:
    """The workspace's session key: created once (mode 0600), kept across restarts."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


SESSIONS: web.AppKey[Sessions] = web.AppKey("dashboard_sessions")
SESSION: web.RequestKey[Session] = web.RequestKey("dashboard_session")


def same_origin(request: web.Request) -> bool:
    """True when the request's Origin (or, lacking it, its Referer) is this server's own."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        referer = request.headers.get("Referer")
        if origin is None and referer:
            origin = referer
        else:
            return False
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _foreign_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is not None and (
        origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()
    )


def _host_name(request: web.Request) -> str:
    host = request.host.lower()
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _refuse(request: web.Request, ui: bool, message: str) -> web.StreamResponse:
    if not ui:
        return error_response(403, message)
    return web.Response(
        status=403, text=f"403 Forbidden: {message}\n", content_type="text/plain", headers=HEADERS
    )


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origin, session, CSRF and sign-in checks; security headers on dashboard responses."""
    route = request.match_info.route.name or ""
    ui = route.startswith("ui.")
    hook = request.path.startswith("/hooks/")
    if request.method not in SAFE and not hook and _foreign_origin(request):
        return _refuse(request, ui, "cross-site request refused")
    sessions = request.app[SESSIONS]
    token = sessions.token()
    session = sessions.read(request.cookies.get(COOKIE))
    if token and session is not None and session.auth and (request.method in SAFE or ui):
        request[SESSION_OK] = True  # the API's Bearer check accepts this signed-in browser
    if not ui:
        return await handler(request)
    if not token and _host_name(request) not in LOOPBACK:
        # Without a token only loopback names are served: a rebound DNS name pointing here
        # must not turn a page elsewhere into a same-origin client.
        return _refuse(request, ui, f"host {request.host!r} is not served without a token")
    fresh_cookie = None
    if session is None:
        session, fresh_cookie = sessions.issue(auth=not token)
    request[SESSION] = session
    if route not in PUBLIC and token and not session.auth:
        if route == "ui.live":  # an EventSource cannot follow a redirect to a form
            return web.Response(status=401, text="sign in first\n", headers=HEADERS)
        return _to_login(request, fresh_cookie)
    request[SESSION_OK] = True  # the guard has decided: the Bearer check does not apply
    if request.method not in SAFE:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None:
            form = await request.post()
            sent = str(form.get(CSRF_FIELD, ""))
        if not same_origin(request):
            return _refuse(request, ui, "a dashboard POST must come from this origin")
        if fresh_cookie is not None or not hmac.compare_digest(
            sent.encode(), sessions.csrf(session).encode()
        ):
            return _refuse(request, ui, "missing or wrong CSRF token (reload the page)")
    resp = await handler(request)
    for name, value in HEADERS.items():
        resp.headers.setdefault(name, value)
    if fresh_cookie is not None:
        set_cookie(request, resp, fresh_cookie)
    return resp


def set_cookie(request: web.Request, resp: web.StreamResponse, value: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    resp.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def _to_login(request: web.Request, cookie: str | None) -> web.StreamResponse:
    target = request.path_qs if request.method in SAFE else "/"
    location = "/login?" + urlencode({"next": target})
    if request.headers.get("HX-Request"):
        resp: web.StreamResponse = web.Response(status=204, headers={"HX-Redirect": location})
    else:
        resp = web.Response(status=303, headers={"Location": location, **HEADERS})
    if cookie is not None:
        set_cookie(request, resp, cookie)
    return resp


def safe_next(value: str | None) -> str:
    """A redirect target after login: a path on this server only (no //host, no scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
