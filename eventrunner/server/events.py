"""GET /api/events: server-sent events (changed, queued, started, succeeded, failed, ...)."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from aiohttp import web

from eventrunner.run.events import Dropped, Event
from eventrunner.server.keys import RUNTIME
from eventrunner.server.sse import arrivals, open_stream

QUEUE_MAX = 1000


def sse_frame(event: Event) -> bytes:
    """One event as the stream sends it: `event: KIND` and `data: JSON` (see run/events.py)."""
    return f"event: {event.kind.value}\ndata: {json.dumps(event.data(), default=str)}\n\n".encode()


async def events_stream(request: web.Request) -> web.StreamResponse:
    """Stream every runtime event as `event: KIND` / `data: JSON` until the client or server goes."""
    rt = request.app[RUNTIME]
    kinds = set(filter(None, request.query.get("kinds", "").split(",")))
    queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_MAX)
    dropped = 0

    def sink(event: Event) -> None:
        nonlocal dropped
        if kinds and event.kind not in kinds:
            return
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            dropped += 1  # a slow reader loses events rather than slowing the runtime

    resp = await open_stream(request)
    rt.events.subscribe(sink)
    try:
        await resp.write(b": connected\n\n")
        async with aclosing(arrivals(resp, queue.get, rt.stop_event)) as events:
            async for event in events:
                if event is None:
                    break
                if dropped:
                    await resp.write(sse_frame(Dropped(count=dropped)))
                    dropped = 0
                await resp.write(sse_frame(event))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        rt.events.unsubscribe(sink)
    return resp
