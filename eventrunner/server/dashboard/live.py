"""GET /live: the one server-sent-events stream of a dashboard tab, coalesced on the server.

The runtime may emit thousands of events a second; a page needs at most one update a second.
Each stream wakes when an event arrives, waits until a second has passed since its last update,
then sends what changed for its view: `counts` (only the cells that changed since the last
update, as absolute values, so a lost message heals at the next one), `status` (queue depth,
what is running), `events` (the tail, capped per update, for the events page) and `refresh`
(the page's live fragment should be fetched again: its rows changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from eventrunner.server.dashboard.queries import stage_counts, table
from eventrunner.server.dashboard.render import RECENT
from eventrunner.server.keys import RUNTIME, STATES
from eventrunner.server.sse import arrivals, open_stream

MIN_INTERVAL_S = 1.0
EVENTS_PER_UPDATE = 200
RECENT_SIZE = 500
WORK = frozenset({"queued", "started", "succeeded", "failed"})
BROAD = frozenset({"managed", "reloaded", "pruned", "ready"})


def _get(event: Any, name: str) -> Any:
    # Events are dicts today; typed event objects expose the same names as attributes.
    return event.get(name) if isinstance(event, dict) else getattr(event, name, None)


def _text(event: Any) -> str:
    kind = _get(event, "kind")
    if kind == "failed":
        error = str(_get(event, "error") or "")
        return (error.splitlines() or [""])[0][:300] + (" (dead)" if _get(event, "dead") else "")
    if kind == "changed":
        return f"{_get(event, 'path')} {_get(event, 'change') or ''}".strip()
    if kind == "queued":
        return ", ".join(str(r) for r in _get(event, "reasons") or [])
    if kind == "started":
        return f"attempt {_get(event, 'attempt') or 1}"
    if kind == "succeeded":
        d = _get(event, "duration_s")
        return f"{float(d) * 1000:.0f} ms" if isinstance(d, (int, float)) else ""
    if kind == "managed":
        return str(_get(event, "action") or "")
    return ""


@dataclass
class Shown:
    """An event as the events page shows it (plain text fields only)."""

    seq: int
    time: float
    kind: str
    stage: str
    entity: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("seq", "time", "kind", "stage", "entity", "text")}


class Recent:
    """The last events, for the events page without JavaScript and for resuming a stream."""

    def __init__(self, size: int = RECENT_SIZE) -> None:
        self.items: deque[Shown] = deque(maxlen=size)
        self.seq = 0

    def on_event(self, event: Any) -> None:
        """A runtime event sink."""
        self.seq += 1
        self.items.append(
            Shown(
                self.seq,
                float(_get(event, "time") or time.time()),
                str(_get(event, "kind") or "message"),
                str(_get(event, "stage") or ""),
                str(_get(event, "entity") or ""),
                _text(event),
            )
        )

    def after(self, seq: int) -> list[Shown]:
        return [s for s in self.items if s.seq > seq]


RECENT_KEY = RECENT  # the app key (declared in render, which every page imports)


class _View:
    """What one stream watches, and what it last sent."""

    def __init__(self, request: web.Request) -> None:
        q = request.query
        self.kind = q.get("view", "overview")
        self.stage = q.get("stage") or None
        self.entity = q.get("entity") or None
        self.counts: dict[str, dict[str, int]] = {}
        self.status: dict[str, Any] = {}
        self.touched = False  # an event concerning this view's rows arrived
        # The last event the page had seen when it was rendered (or, reconnecting, the last
        # one the stream sent): what came after it is caught up at once, not lost to the gap
        # between rendering the page and opening its stream.
        self.last_seq = _int(request.headers.get("Last-Event-ID") or q.get("since"))

    def wants_counts(self) -> bool:
        return self.kind in ("overview", "graph", "stage")

    def notice(self, event: Any) -> None:
        kind = _get(event, "kind")
        if kind in BROAD:
            self.touched = True
        elif self.kind == "stage" and kind in WORK:
            self.touched = self.touched or _get(event, "stage") == self.stage
        elif self.kind == "entity" and kind in WORK:
            self.touched = self.touched or _get(event, "entity") == self.entity
        elif self.kind in ("failures", "activity") and kind in ("succeeded", "failed"):
            self.touched = True


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _frame(kind: str, data: Any, seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _update(request: web.Request, view: _View) -> list[bytes]:
    """The frames this view needs now (empty when nothing it shows changed)."""
    rt = request.app[RUNTIME]
    frames: list[bytes] = []
    if rt.index is None or rt.engine is None:
        return frames
    if view.wants_counts():
        stages = [view.stage] if view.kind == "stage" and view.stage else list(rt.ws.graph.order)
        stages = [q for q in stages if q in rt.ws.graph.stages]
        now = stage_counts(await table(request.app[STATES]), stages)
        delta = {
            q: {s: n for s, n in c.items() if view.counts.get(q, {}).get(s) != n}
            for q, c in now.items()
        }
        delta = {q: c for q, c in delta.items() if c}
        if delta:
            frames.append(_frame("counts", delta))
            view.counts = now
    running = sorted(rt.index.running)
    status = {
        "queue_depth": rt.engine.queue_depth,
        "running": len(running),
        "running_now": [{"stage": q, "entity": e} for q, e in running[:20]],
    }
    if status != view.status:
        frames.append(_frame("status", status))
        view.status = status
    if view.kind == "events":
        recent = request.app[RECENT_KEY]
        fresh = recent.after(view.last_seq)
        if fresh:
            batch = fresh[-EVENTS_PER_UPDATE:]
            skipped = len(fresh) - len(batch)
            payload = {"events": [s.to_json() for s in batch], "skipped": skipped}
            frames.append(_frame("events", payload, batch[-1].seq))
            view.last_seq = batch[-1].seq
    if view.touched:
        view.touched = False
        frames.append(_frame("refresh", {"view": view.kind}))
    return frames


async def live(request: web.Request) -> web.StreamResponse:
    """The stream: a first full update, then at most one update per second while events come."""
    rt = request.app[RUNTIME]
    view = _View(request)
    wake = asyncio.Event()

    def sink(event: Any) -> None:
        view.notice(event)
        wake.set()

    resp = await open_stream(request)
    rt.events.subscribe(sink)
    for shown in request.app[RECENT_KEY].after(view.last_seq):
        view.notice(shown)
    try:
        await resp.write(b"retry: 2000\n: connected\n\n")
        for frame in await _update(request, view):
            await resp.write(frame)
        sent = time.monotonic()
        async with aclosing(arrivals(resp, wake.wait, rt.stop_event)) as wakes:
            async for _ in wakes:
                # Coalesce: everything that arrives within the second goes out in one update.
                await asyncio.sleep(max(0.0, sent + MIN_INTERVAL_S - time.monotonic()))
                wake.clear()
                for frame in await _update(request, view):
                    await resp.write(frame)
                sent = time.monotonic()
    except ConnectionResetError:
        pass  # the tab went away
    finally:
        with contextlib.suppress(ValueError):
            rt.events.unsubscribe(sink)
    return resp
