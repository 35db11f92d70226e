"""The server-sent-events plumbing the API stream and the dashboard share.

Both streams open the same way (no caching, no proxy buffering), send a comment line every
`HEARTBEAT_S` while idle so proxies and browsers keep the connection, and end when the runtime
stops or the client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from aiohttp import web

HEARTBEAT_S = 15.0
T = TypeVar("T")


async def open_stream(request: web.Request) -> web.StreamResponse:
    """A prepared `text/event-stream` response."""
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    return resp


async def arrivals(
    resp: web.StreamResponse,
    next_item: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    heartbeat: float = HEARTBEAT_S,
) -> AsyncGenerator[T, None]:
    """Yield what `next_item()` gives, one at a time, with heartbeats while idle, until `stop`."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            waiter = asyncio.ensure_future(next_item())
            done, _ = await asyncio.wait(
                {waiter, stopping}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                waiter.cancel()
                if stopping in done:
                    return
                await resp.write(b": heartbeat\n\n")
                continue
            yield waiter.result()
    finally:
        stopping.cancel()
