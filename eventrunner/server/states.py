"""The state of every (stage, entity) while serving, for status counts, metrics and listings.

Evaluating every state takes seconds at 100,000 entities, so it is done once (a full pass that
yields to the event loop every `chunk` states) and then kept up to date from events: a state
an event names, the states a changed file feeds, and everything downstream of those are
evaluated again at the next read, O(affected). States with a failure record are re-read every
time (a backoff expiring changes them with no event). Anything an event cannot pin down (a
reload, a hold or invalidation, a prune) and a timer (`full_every`) bring a new full pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

from eventrunner.core.errors import PatternError
from eventrunner.core.staleness import STATES
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.events import Changed, Event, EventKind, StateEvent
from eventrunner.run.planner import Planner
from eventrunner.run.queries import state_ids

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime

# Events that change no state by themselves (the file a webhook writes is its own event).
QUIET = frozenset({EventKind.webhook, EventKind.reload_failed})


class StateTable:
    """Every state's current verdict, shared by the API and /metrics."""

    def __init__(self, runtime: Runtime, *, chunk: int = 500, full_every: float = 600.0) -> None:
        self.rt = runtime
        self.chunk = chunk
        self.full_every = full_every
        self.states: dict[str, dict[str, str]] = {}  # stage -> entity id -> state, listing order
        self.tally: dict[str, Counter[str]] = {}
        self.full_passes = 0
        self._all = True  # a full pass is due
        self._full_at = 0.0
        self._index_id = 0
        self._dirty: set[tuple[str, str]] = set()
        self._paths: list[str] = []
        self._inflight: asyncio.Task[None] | None = None
        runtime.events.subscribe(self._on_event)

    # -- reading ---------------------------------------------------------------------------------
    def counts(self, stages: list[str]) -> dict[str, dict[str, int]]:
        """stage -> {state: n} for every state name."""
        return {q: {s: self.tally.get(q, Counter())[s] for s in STATES} for q in stages}

    def failed(self) -> dict[str, list[str]]:
        """stage -> entity ids of its failed states (for their next retry times)."""
        return {q: self.ids(q, "failed") for q, c in self.tally.items() if c["failed"]}

    def ids(self, stage: str, state: str) -> list[str]:
        """Entity ids of one stage's states in `state`, in listing order."""
        return [e for e, s in self.states.get(stage, {}).items() if s == state]

    async def get(self) -> StateTable:
        """Bring the table up to date (sharing one refresh between concurrent readers)."""
        if self._inflight is None or self._inflight.done():
            if not self._due():
                return self
            self._inflight = asyncio.create_task(self._refresh())
        await asyncio.shield(self._inflight)
        return self

    # -- keeping up --------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if isinstance(event, StateEvent):
            self._dirty.add((event.stage, event.entity))
        elif isinstance(event, Changed):
            self._paths.append(event.path)
        elif event.kind not in QUIET:
            self._all = True

    def _due(self) -> bool:
        idx = self.rt.index
        return bool(
            self._all
            or self._dirty
            or self._paths
            or id(idx) != self._index_id
            or time.monotonic() - self._full_at > self.full_every
            or (
                idx is not None
                and any(not f.dead for fs in idx.failures.values() for f in fs.values())
            )
        )

    async def _refresh(self) -> None:
        idx = self.rt.index
        assert idx is not None
        if (
            self._all
            or id(idx) != self._index_id
            or time.monotonic() - self._full_at > self.full_every
        ):
            await self._full_pass()
        await self._catch_up()

    async def _full_pass(self) -> None:
        rt = self.rt
        assert rt.index is not None
        index = rt.index
        # What happens from here on is caught up afterwards (the pass may have read it already).
        self._all, self._dirty, self._paths = False, set(), []
        started = time.monotonic()
        for _ in index.warm_in_steps():  # the records, read a few thousand at a time
            await asyncio.sleep(0)
            if rt.index is not index:
                return await self._full_pass()
        ev = Evaluator(index)
        states: dict[str, dict[str, str]] = {}
        n = 0
        for q in index.ws.graph.order:
            table = states.setdefault(q, {})
            for eid in state_ids(index, q):
                table[eid] = ev.verdict(q, eid, index.entity_values(q, eid)).state
                n += 1
                if n % self.chunk == 0:
                    await asyncio.sleep(0)  # let intake and events through
                    if rt.index is not index:
                        return await self._full_pass()  # reloaded under us: start over
                    if ev.memo_size > 250_000:
                        ev.reset(ev.now)  # bound memory; upstream verdicts are recomputed
        self.states = states
        self.tally = {q: Counter(t.values()) for q, t in states.items()}
        self._full_at, self._index_id = started, id(index)
        self.full_passes += 1

    async def _catch_up(self) -> None:
        """Evaluate again what events touched since, and everything downstream of it."""
        rt = self.rt
        assert rt.index is not None
        index, g = rt.index, rt.index.ws.graph
        planner = Planner(index)  # read-only here: concerned_by and descendants
        seeds, self._dirty = self._dirty, set()
        paths, self._paths = self._paths, []
        for path in paths:
            seeds.update((q, e) for q, e, _ in planner.concerned_by(path))
        # Backing off: the verdict changes when the backoff expires, with no event.
        seeds.update(
            (q, e) for q, fs in index.failures.items() for e, f in fs.items() if not f.dead
        )
        todo = set()
        for q, e in seeds:
            if q not in g.stages:
                continue
            todo.add((q, e))
            try:
                values = index.entity_values(q, e)
            except PatternError:
                continue
            todo.update((d, de) for d, de, _ in planner.descendants(q, values))
        ev = Evaluator(index)
        for n, (q, e) in enumerate(sorted(todo, key=lambda t: g.stages[t[0]].depth), 1):
            self._apply(ev, q, e)
            if n % self.chunk == 0:
                await asyncio.sleep(0)
                if rt.index is not index:
                    return

    def _apply(self, ev: Evaluator, q: str, eid: str) -> None:
        index = self.rt.index
        assert index is not None
        table, tally = self.states.setdefault(q, {}), self.tally.setdefault(q, Counter())
        old = table.get(eid)
        try:
            values = index.entity_values(q, eid)
        except PatternError:
            return
        if not index.has_entity(q, values) and eid not in index.manifests[q]:
            new = None  # gone without a trace: no longer a state
        else:
            new = ev.verdict(q, eid, values).state
        if new == old:
            return
        if old is not None:
            tally[old] -= 1
        if new is None:
            table.pop(eid, None)
        else:
            table[eid] = new
            tally[new] += 1
