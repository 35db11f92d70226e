"""The state of every (stage, entity), for status counts, metrics and listings filtered by state.

Knowing it means evaluating every state: seconds at 100,000 entities. Done in one call on the
event loop, that stalled webhook intake and event handling for as long. Here a pass yields to the
loop every `chunk` states, readers arriving meanwhile share the pass in flight, and a result is
reused while nothing has happened since it began (no event, no state change), or while it is
younger than the pass took to compute (so constant churn costs at most half a core).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import ops
from ..evaluate import Evaluator
from ..staleness import STATES

if TYPE_CHECKING:
    from ..runtime import Runtime


@dataclass
class StatePass:
    """One pass: stage qualname -> state -> entity ids, in listing order."""

    buckets: dict[str, dict[str, list[str]]]
    started: float  # time.monotonic() when the pass began
    took: float  # seconds it took
    key: tuple[int, int, int]  # what had happened when it began (see StateTable._key)

    def counts(self, stages: list[str]) -> dict[str, dict[str, int]]:
        """stage -> {state: n} for every state name."""
        return {
            q: {s: len(self.buckets.get(q, {}).get(s, ())) for s in STATES} for q in stages
        }


class StateTable:
    """Shared, cooperative, cached evaluation of every state of a running workspace."""

    def __init__(self, runtime: Runtime, *, chunk: int = 500, ttl: float = 10.0) -> None:
        self.rt = runtime
        self.chunk = chunk
        self.ttl = ttl  # time alone changes states too (a backoff expiring)
        self.last: StatePass | None = None
        self._events = 0
        self._inflight: asyncio.Task[StatePass] | None = None
        runtime.sinks.append(self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        self._events += 1

    def _key(self) -> tuple[int, int, int]:
        idx = self.rt.index
        return (self._events, idx.generation if idx else 0, id(idx))

    def _usable(self, p: StatePass | None) -> bool:
        if p is None:
            return False
        age = time.monotonic() - p.started
        if age < p.took:
            return True  # churn: a pass at most every other moment
        return p.key == self._key() and age < self.ttl

    async def get(self) -> StatePass:
        """A pass recent enough (see the module docstring), computing one if needed."""
        if self._usable(self.last):
            assert self.last is not None
            return self.last
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._compute())
        return await asyncio.shield(self._inflight)

    async def _compute(self) -> StatePass:
        rt = self.rt
        assert rt.index is not None
        index = rt.index
        key, started = self._key(), time.monotonic()
        ev = Evaluator(index)
        buckets: dict[str, dict[str, list[str]]] = {}
        n = 0
        for q in index.ws.graph.order:
            bucket = buckets.setdefault(q, {})
            for eid in ops.state_ids(index, q):
                verdict = ev.verdict(q, eid, ops.values_of(index, q, eid))
                bucket.setdefault(verdict.state, []).append(eid)
                n += 1
                if n % self.chunk == 0:
                    await asyncio.sleep(0)  # let intake and events through
                    if rt.index is not index:
                        return await self._compute()  # reloaded under us: start over
                    if ev.memo_size > 250_000:
                        ev.reset(ev.now)  # bound memory; upstream verdicts are recomputed
        self.last = StatePass(buckets, started, time.monotonic() - started, key)
        return self.last
