"""The SSE loop both streams share (server/sse.py), over a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from aiohttp import web

from eventrunner.server.sse import arrivals, open_stream

QUEUE: web.AppKey[asyncio.Queue[str]] = web.AppKey("queue", asyncio.Queue)
STOP: web.AppKey[asyncio.Event] = web.AppKey("stop", asyncio.Event)
CLOSED: web.AppKey[asyncio.Event] = web.AppKey("closed", asyncio.Event)


async def _stream(request: web.Request) -> web.StreamResponse:
    resp = await open_stream(request)
    try:
        await resp.write(b": connected\n\n")
        queue = request.app[QUEUE]
        async with aclosing(arrivals(resp, queue.get, request.app[STOP], 0.05)) as items:
            async for item in items:
                await resp.write(f"data: {item}\n\n".encode())
    finally:
        request.app[CLOSED].set()
    return resp


def _app() -> web.Application:
    app = web.Application()
    app[QUEUE], app[STOP], app[CLOSED] = asyncio.Queue(), asyncio.Event(), asyncio.Event()
    app.router.add_get("/s", _stream)
    return app


async def _line(resp: Any) -> str:
    raw: bytes = await asyncio.wait_for(resp.content.readline(), 10)
    return raw.decode().rstrip("\n")


async def _until_line(resp: Any, wanted: str) -> list[str]:
    seen = []
    while (line := await _line(resp)) != wanted:
        seen.append(line)
    return seen


async def test_an_idle_stream_sends_heartbeats_then_items_in_order(aiohttp_client: Any) -> None:
    # Given a stream with nothing to send yet
    app = _app()
    client = await aiohttp_client(app)
    async with client.get("/s") as resp:
        # Then it is an event stream that proxies must not buffer
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert await _line(resp) == ": connected"
        # And while idle it sends heartbeats
        await _until_line(resp, ": heartbeat")
        # When items arrive they are sent in order
        for item in ("one", "two"):
            app[QUEUE].put_nowait(item)
        skipped = await _until_line(resp, "data: one")
        assert set(skipped) <= {"", ": heartbeat"}
        assert await _line(resp) == ""
        assert await _line(resp) == "data: two"


async def test_the_stream_ends_when_the_server_stops(aiohttp_client: Any) -> None:
    # Given a connected stream
    app = _app()
    client = await aiohttp_client(app)
    async with client.get("/s") as resp:
        assert await _line(resp) == ": connected"
        # When the server's stop event is set
        app[STOP].set()
        # Then the response ends (the reader sees end of stream), and the handler returned
        rest = await asyncio.wait_for(resp.content.read(), 10)
        assert set(rest.decode().split("\n")) <= {"", ": heartbeat"}
        await asyncio.wait_for(app[CLOSED].wait(), 10)


async def test_a_client_that_goes_away_ends_the_loop(aiohttp_client: Any) -> None:
    # Given a connected stream
    app = _app()
    client = await aiohttp_client(app)
    resp = await client.get("/s")
    assert await _line(resp) == ": connected"
    # When the client closes the connection
    resp.close()
    # Then the next heartbeat fails to write and the handler ends (it does not run forever)
    await asyncio.wait_for(app[CLOSED].wait(), 10)
