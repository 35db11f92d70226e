"""Retries at their own time under `serve`: one timer, armed for the earliest due retry.

A failed attempt's `failed` event carries its retry time; that time goes into a heap, and a
single loop timer is armed for the heap's earliest entry. Each event costs O(log n) for the
state it names, never a look at every failure; the retry sweep (schedule.py's interval job)
stays as a safety net. An entry is dropped when its state starts again (a retry by hand, an
input change), goes dead, or is re-armed by a newer failure; what changed without an event of
its own (a hold, a fix) is checked when the timer fires, against the failure on record.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

from eventrunner.run.events import Dead, Event, Failed, Started
from eventrunner.run.planner import Target
from eventrunner.state.index import Index

log = logging.getLogger("eventrunner.retries")

Due = Callable[[list[tuple[str, str, float]]], None]


class RetryTimer:
    """Keeps (stage, entity) -> retry time and calls `due` with those whose time has come."""

    def __init__(self, due: Due) -> None:
        self._due = due
        self._at: dict[tuple[str, str], float] = {}  # the one live retry time of each state
        self._heap: list[tuple[float, str, str]] = []  # may hold superseded entries (lazy)
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """States with a retry scheduled."""
        return len(self._at)

    def next_due(self) -> float | None:
        """The earliest retry time scheduled (epoch seconds), or None."""
        self._drop_superseded()
        return self._heap[0][0] if self._heap else None

    def schedule(self, stage: str, entity: str, at: float) -> None:
        """Retry (stage, entity) at `at` (epoch seconds); replaces its earlier time, if any."""
        if self._closed or self._at.get((stage, entity)) == at:
            return
        self._at[(stage, entity)] = at
        heapq.heappush(self._heap, (at, stage, entity))
        if self._armed_for is None or at < self._armed_for:
            self._arm()

    def forget(self, stage: str, entity: str) -> None:
        """No retry for (stage, entity) any more (its heap entry is skipped when reached)."""
        self._at.pop((stage, entity), None)

    def on_event(self, event: Event) -> None:
        """The bus listener: a failure with a retry time schedules it; a start or death ends it."""
        if isinstance(event, Failed) and event.retry_at is not None and not event.dead:
            self.schedule(event.stage, event.entity, event.retry_at)
        elif isinstance(event, Started | Dead) or (isinstance(event, Failed) and event.dead):
            self.forget(event.stage, event.entity)

    def arm_from(self, index: Index) -> None:
        """Schedule the retry of every failure on record (at start and after a reload: once,
        O(failures)); from then on the engine's `failed` events keep the timer up to date."""
        for fails in index.failures.values():
            for f in fails.values():
                if not f.dead and f.next_retry is not None:
                    self.schedule(f.stage, f.entity, f.next_retry)

    def close(self) -> None:
        """Disarm; nothing fires after this. Safe to call twice."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = None

    def _drop_superseded(self) -> None:
        heap = self._heap
        while heap and self._at.get((heap[0][1], heap[0][2])) != heap[0][0]:
            heapq.heappop(heap)

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = None
        self._drop_superseded()
        if self._closed or not self._heap:
            return
        at = self._heap[0][0]
        loop = asyncio.get_running_loop()
        # Wall-clock retry times on the loop's monotonic clock; _fire checks the wall clock
        # again, since a timer may fire a little early (the loop's clock resolution).
        self._handle = loop.call_later(max(0.0, at - time.time()), self._fire)
        self._armed_for = at

    def _fire(self) -> None:
        self._handle, self._armed_for = None, None
        now = time.time()
        ready: list[tuple[str, str, float]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, stage, entity = heapq.heappop(heap)
            if self._at.get((stage, entity)) == at:
                del self._at[(stage, entity)]
                ready.append((stage, entity, at))
        if ready:
            try:
                self._due(ready)
            except Exception:  # the sweep still finds them; the timer must keep going
                log.exception("retrying %d state(s) at their time failed", len(ready))
        self._arm()


def state_values(index: Index, stage: str, entity: str) -> dict[str, str] | None:
    """The variable values of a state that may have a failure on record, or None if gone."""
    m = index.manifests[stage].get(entity)
    return m.values if m else index.values_or_none(stage, entity)


def still_due(index: Index, due: list[tuple[str, str, float]]) -> list[Target]:
    """The targets among `due` whose failure on record still asks for a retry at that time:
    not retried by hand, re-armed or dead meanwhile. A held or fixed one stays in: consider()
    queues only what is runnable."""
    targets: list[Target] = []
    for stage, entity, at in due:
        f = index.failures.get(stage, {}).get(entity)
        if f is None or f.dead or f.next_retry != at:
            continue
        values = state_values(index, stage, entity)
        if values is not None:
            targets.append((stage, entity, values))
    return targets
