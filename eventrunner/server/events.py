"""GET /api/events: server-sent events (changed, queued, started, succeeded, failed, ...)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from eventrunner.run.events import Dropped, Event
from eventrunner.server.keys import RUNTIME

HEARTBEAT_S = 15.0
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

    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    rt.events.subscribe(sink)
    stop = asyncio.ensure_future(rt.stop_event.wait())
    try:
        await resp.write(b": connected\n\n")
        while not rt.stop_event.is_set():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, stop}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if stop in done:
                    break
                await resp.write(b": heartbeat\n\n")
                continue
            event = getter.result()
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
        stop.cancel()
    return resp
