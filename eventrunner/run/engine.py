"""Plan and execute: a priority queue of stale states, bounded workers, group-committed writes.

Shared by `eventrunner run` (drain once) and `serve` (long-running): every committed output is an
event whose downstream (stage, entity) pairs are found through the graph and the index and
checked alone, so work per event is proportional to what it affects.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from eventrunner.core.staleness import Reason, Verdict
from eventrunner.run.attempt import Running
from eventrunner.run.commit import Committer
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.events import EventBus, Queued
from eventrunner.run.executors import Executor
from eventrunner.run.finish import Finishing
from eventrunner.run.planner import Planner, Target
from eventrunner.run.pools import make_executor
from eventrunner.run.report import RunReport
from eventrunner.run.settle import Settling
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace import loader

log = logging.getLogger("eventrunner.engine")


class Engine(Running, Finishing):
    """Runs stale states, upstream first and by priority, and follows their effects downstream."""

    def __init__(
        self,
        index: Index,
        store: Store,
        *,
        jobs: int = 4,
        allow: Callable[[str, str], bool] | None = None,
        events: EventBus | None = None,
        executor: Executor | None = None,
        retry_in_run: bool = False,
        one_core: bool = False,
    ) -> None:
        """`events`: where to tell what happens (a fresh bus by default). `executor`: where
        handler calls run (the caller closes one it passes; by default the engine makes the
        one `[runtime] executor` names, sized `jobs`, and closes it at stop). `one_core`: that
        one may keep the process on one core while calls are quick (run/affinity.py)."""
        self.index = index
        self.ws = index.ws
        self.store = store
        self.jobs = max(1, jobs)
        self.allow = allow or (lambda q, e: True)
        self.events = events if events is not None else EventBus()
        self.evaluator = Evaluator(index)
        self.planner = Planner(index)
        self.settling = Settling(index.ws.graph)
        self.outcome = RunReport()
        self.retry_in_run = retry_in_run  # serve: failures come back through the sweep instead
        self._heap: list[tuple[int, int, int, str, str]] = []
        self._queued: dict[tuple[str, str], dict[str, str]] = {}
        self._deferred: dict[str, list[tuple[int, int, int, str, str]]] = {}
        self._running_per_stage: dict[str, int] = {}
        self._rerun: set[tuple[str, str]] = set()
        self._failed_now: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Future[Any]] = set()  # attempts under way (run/attempt.py)
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._owns_executor = executor is None
        runtime = self.ws.settings.runtime
        self.executor = executor or make_executor(
            runtime.executor, self.jobs, runtime, one_core and runtime.one_core
        )
        self.executor.on_capacity_change(self._wake.set)
        self.committer = Committer(store, index.root, after_batch=self._follow_batch)
        self._funcs: dict[str, Callable[..., Any]] = {}
        loader.forget(
            self.ws.settings.handlers_dir
        )  # helpers edited since the last run import afresh
        self._dispatcher: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()  # recording failed commits
        self._committing = 0  # successes queued for a group commit, not yet followed
        self._follow: list[Target] = []
        self._follow_written: dict[str, str] = {}
        self._to_settle: list[str] = []
        self.max_inflight_commits = (
            2048  # backpressure: finished runs waiting for their group commit
        )
        self._accepting = True
        self.blocked_seen = 0  # failed, dead or held states met by consider()
        self.stopped_clean = False  # stop() found nothing queued and cancelled nothing

    @property
    def abandoned(self) -> int:
        """Sync handlers left running in a thread after a timeout or cancel (not stoppable)."""
        return self.executor.abandoned

    # -- public API: what sessions, the runtime and management call (nothing reaches further) --
    def targets(self, stages: list[str] | None = None) -> Iterator[Target]:
        """Every (stage, entity) of the workspace, or of `stages`, upstream first."""
        return self.planner.iter_targets(stages)

    def affected_by(self, kind: str, relpath: str) -> tuple[list[Target], bool]:
        """What one added, modified or deleted file affects (the index learns of a source file
        coming or going), and whether it is a source file; nothing is checked yet."""
        return self.planner.targets_for_change(kind, relpath)

    def report_change(self, kind: str, relpath: str) -> tuple[int, bool]:
        """One file changed: check and queue what it affects; (states queued, is a source)."""
        targets, source_hit = self.affected_by(kind, relpath)
        return (self.consider(targets) if targets else 0), source_hit

    def removed_targets(self, pattern_key: str, values: dict[str, str]) -> list[Target]:
        """What an instance that vanished affects (entities vanishing with it followed)."""
        return self.planner.removed_targets(pattern_key, values)

    def seed_certs(self, targets: list[Target]) -> None:
        """Everything was fresh at the stamp and `targets` are what changed since: aggregates
        take their members from their manifests, those the targets may change marked first."""
        self.evaluator.certs.seed()
        for q, _eid, values in targets:
            self.evaluator.touched(q, values)

    def verdict(self, qualname: str, eid: str, values: dict[str, str]) -> Verdict:
        """The state of (stage, entity) now, memoised until forget_verdicts()."""
        return self.evaluator.verdict(qualname, eid, values)

    def forget_verdicts(self) -> None:
        """Drop the memo of the last pass (a verdict per state it checked)."""
        self.evaluator.reset()

    def queued(self) -> list[tuple[str, str]]:
        """(stage, entity) pairs waiting for a worker, sorted."""
        return sorted(self._queued)

    # -- planning ----------------------------------------------------------------------------
    def consider(
        self,
        targets: Iterable[Target],
        *,
        fresh_pass: bool = False,
        blocked: set[tuple[str, str]] | None = None,
        cool: bool = True,
    ) -> int:
        """Check each target and queue the stale ones; returns how many were queued. Failed,
        dead and held targets are counted (blocked_seen) and, given a set, collected in it.
        `cool` False: a slice of a longer pass, which cools the index's maps once at its end."""
        if not fresh_pass:
            self.evaluator.reset()
        n = 0
        for q, eid, values in targets:
            self.evaluator.touched(q, values)  # an aggregate's members it may change: re-checked
            if not self.allow(q, eid):
                continue
            if (q, eid) in self.index.running:
                self._rerun.add((q, eid))
                continue
            if (q, eid) in self._queued or (not self.retry_in_run and (q, eid) in self._failed_now):
                continue
            if self.settling.hold(q, eid, values):
                continue  # an aggregate: checked once its members settle
            verdict = self.evaluator.verdict(q, eid, values, incremental=True)
            if verdict.runnable:  # stale, or failed with its retry due
                self._push(q, eid, values, verdict.reasons)
                n += 1
            elif verdict.state in ("failed", "dead", "held"):
                self.blocked_seen += 1
                if blocked is not None:
                    blocked.add((q, eid))
        if self.retry_in_run and cool:
            # serve lives on: a fan-in's walk read every record of its members into memory in
            # one scan; its cert now knows them, so the maps go back to bounded caches.
            self.index.cool_warm()
        return n

    async def consider_async(
        self,
        targets: Iterable[Target],
        *,
        chunk: int = 500,
        blocked: set[tuple[str, str]] | None = None,
        warm: bool = False,
    ) -> int:
        """consider() a long run of targets in slices, yielding to the event loop between them:
        a whole-workspace pass in serve must not hold up intake and events for seconds. `warm`:
        the targets are most states; the index's records are read first, in steps too."""
        if warm:
            for _ in self.index.warm_in_steps():
                await asyncio.sleep(0)
        self.evaluator.reset()
        n, batch = 0, []
        for target in targets:
            batch.append(target)
            if len(batch) >= chunk:
                # Not cooled between slices: each would scan every record again (O(N^2)).
                n += self.consider(batch, fresh_pass=True, blocked=blocked, cool=False)
                batch.clear()
                await asyncio.sleep(0)
        n += self.consider(batch, fresh_pass=True, blocked=blocked)
        self.evaluator.reset()  # the pass's memo: a verdict per state
        return n

    def _push(
        self, q: str, eid: str, values: dict[str, str], reasons: tuple[Reason, ...] = ()
    ) -> None:
        stage = self.ws.graph.stages[q]
        heapq.heappush(self._heap, (-stage.priority, stage.depth, next(self._seq), q, eid))
        self._queued[(q, eid)] = values
        self.settling.started(q)
        # The reason codes are what triggered the run (the execution history shows them).
        if self.events.listening:
            self.events.emit(Queued(stage=q, entity=eid, reasons=tuple(r.code for r in reasons)))
        self._wake.set()

    @property
    def queue_depth(self) -> int:
        """States waiting for a worker."""
        return len(self._queued)

    # -- execution -----------------------------------------------------------------------------
    async def drain(self) -> RunReport:
        """Run until nothing is queued or running (the `run` command)."""
        await self.start()
        try:
            await self.wait_idle()
        finally:
            await self.stop()
        return self.outcome

    async def start(self) -> None:
        """Start the executor, the committer and the dispatcher (long-running use: `serve`)."""
        await self.executor.start()  # ExecutorUnavailable before anything runs
        await self.committer.__aenter__()
        self._dispatcher = asyncio.create_task(self._dispatch_loop())

    async def wait_idle(self) -> None:
        """Return once nothing is queued, deferred or running."""
        while not self._is_idle():
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()

    def _is_idle(self) -> bool:
        return (
            not self._heap
            and not self._tasks
            and not self._commits
            and not self._committing
            and not any(self._deferred.values())
            and not self.settling.waiting
        )

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._accepting:
                busy = self._heap or self._tasks or self._commits or self._committing
                if self.settling.waiting and not busy:
                    self.consider(self.settling.release_all())  # safety net: nothing in flight
                self._dispatch()
            if self._is_idle() or (not self._accepting and not self._in_flight()):
                self._idle.set()

    def _in_flight(self) -> bool:
        return bool(self._tasks or self._commits or self._committing)

    async def stop(self, grace: float | None = None) -> None:
        """Stop starting work; let running handlers finish (within `grace` s), commit, stop. Idempotent."""
        self._accepting = False
        dropped = self.executor.drop_queued()  # not started: they need not use the grace
        pending: set[asyncio.Future[Any]] = set()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            pending &= self._tasks  # those that ended meanwhile queued their commits
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        while self._tasks:  # failures being recorded (each keeps its slot until then)
            await asyncio.wait(set(self._tasks))
        self.stopped_clean = (
            not dropped
            and not pending
            and not self._heap
            and not any(self._deferred.values())
            and not self.settling.waiting
        )
        await self.committer.flush()  # every queued commit written and followed
        while self._commits:  # a failed commit's own record
            await asyncio.wait(set(self._commits))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        await self.committer.close()
        if self._owns_executor:
            await self.executor.close()

    def _dispatch(self) -> None:
        """Start the best ready jobs while global and per-stage slots are free."""
        slots = self.executor.capacity + self.executor.read_ahead
        while (
            self._heap
            and len(self._tasks) < slots
            and self._committing + len(self._commits) < self.max_inflight_commits
        ):
            item = heapq.heappop(self._heap)
            q, eid = item[3], item[4]
            limit = self.ws.graph.stages[q].concurrency
            if limit is not None and self._running_per_stage.get(q, 0) >= limit:
                self._deferred.setdefault(q, []).append(item)
                continue
            values = self._queued.pop((q, eid))
            self._running_per_stage[q] = self._running_per_stage.get(q, 0) + 1
            try:
                self._start(q, eid, values)  # run/attempt.py: callbacks from here on
            except Exception:  # before the attempt was noted (its inputs' gather)
                log.exception("internal error in a job")
                self._running_per_stage[q] -= 1
                self._settled(q)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._commits.discard(task)  # a failed commit's record
        if not self._in_flight():  # else a later end wakes it (a freed slot did: _release)
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in a job", exc_info=task.exception())
