"""Connections under control: header deadlines, a connection limit, and the site that applies them.

Headers trickled one byte every 5 s were accepted after a minute, and ~1,000 idle half-sent
requests used up every file descriptor, so new deliveries could not even connect (issue 14.4).
Each connection now gets `header_timeout` to send a request's headers (from its first byte,
or from the connection itself), idle keep-alive connections close after `idle_timeout`, and
beyond `max_connections` open ones a new connection is answered 503 with Retry-After and
closed at once, before descriptors run out. Body reads are bounded where bodies are read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from eventrunner.workspace.settings import ServerSettings

log = logging.getLogger("eventrunner.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUARD: web.AppKey[ConnectionGuard] = web.AppKey("guard")
_WARN_EVERY = 5.0  # seconds between warnings about shed connections


def _raw(status: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"code": "unavailable", "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_TOO_MANY = _raw(
    "503 Service Unavailable", "too many open connections; retry later", "Retry-After: 1\r\n"
)
_TOO_SLOW = _raw("408 Request Timeout", "request headers took too long")


BACKLOG = 128  # listen backlog, and how many connections asyncio accepts in one go


def default_max_connections() -> int:
    """Connections allowed at once: the descriptor limit less a reserve for everything else
    (journal, index, watcher, handlers' files) and for connections accepted but not refused
    yet (asyncio accepts up to a backlog's worth before any of them is looked at)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    return max(16, soft - max(64 + 2 * BACKLOG, soft // 4))


class _Conn(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: admission and the header deadline."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard, self._inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.state = "headers"  # headers -> request -> idle -> headers ...
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self._guard.admit(self):
            self._refused = True
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.state == "idle":  # the first bytes of the next request on a kept-alive connection
            self.state = "headers"
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard.release(self)
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self.state = "request"
        self._disarm()

    def request_done(self) -> None:
        self.state = "idle"  # aiohttp closes it after keepalive_timeout (idle_timeout)

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.settings.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.state == "headers" and self.transport is not None:
            self._guard.timed_out += 1
            self.transport.write(_TOO_SLOW)
            self.transport.close()


class ConnectionGuard:
    """Counts connections, refuses those over the limit, and ends header phases that drag."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.limit = settings.max_connections or default_max_connections()
        self.by_transport: dict[asyncio.BaseTransport, _Conn] = {}
        self.refused = self.timed_out = 0
        self._warned_at, self._refused_then = 0.0, 0

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], _Conn]:
        """Wrap aiohttp's protocol factory (the runner's server)."""
        return lambda: _Conn(self, inner())

    def admit(self, conn: _Conn) -> bool:
        if len(self.by_transport) >= self.limit:
            self.refused += 1
            self._warn()
            return False
        assert conn.transport is not None
        self.by_transport[conn.transport] = conn
        return True

    def release(self, conn: _Conn) -> None:
        if conn.transport is not None:
            self.by_transport.pop(conn.transport, None)

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            log.warning(
                "%d connections open (max_connections): answered 503 to %d new one(s)",
                len(self.by_transport),
                self.refused - self._refused_then,
            )
            self._warned_at, self._refused_then = now, self.refused

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Headers are in: stop the header clock while the request runs."""
        conn = self.by_transport.get(request.transport) if request.transport else None
        if conn is not None:
            conn.request_started()
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_done()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol_factory(server),
            self._host,
            self._port,
            backlog=BACKLOG,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


def runner_args(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's AppRunner that bound idle connections."""
    return {"keepalive_timeout": settings.idle_timeout}


def setup_guard(app: web.Application, settings: ServerSettings) -> ConnectionGuard:
    """Create the guard of this app (its middleware must run first: see create_app)."""
    guard = ConnectionGuard(settings)
    app[GUARD] = guard
    return guard
