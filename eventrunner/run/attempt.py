"""One attempt's way through the engine, by callbacks: started from the dispatch, finished when
the executor's future resolves. No task per execution: a cold run's loop thread pays for
each execution's asyncio steps (a task, its wake-ups, a loop iteration each), and with the
GIL that loop is the bound. A part of the Engine class (its state is the engine's), kept
apart like run/finish.py.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventrunner.core.changes import changes_inputs
from eventrunner.core.graph import Stage
from eventrunner.core.records import Failure
from eventrunner.run.changes_input import incremental_possible, mark_for_call
from eventrunner.run.checked import PATHS, member_type
from eventrunner.run.evaluate import Evaluator, Gathered
from eventrunner.run.events import EventBus, Started
from eventrunner.run.executors import Call, Executor
from eventrunner.run.invoke import Written, annotation_of
from eventrunner.run.report import RunReport
from eventrunner.state import heap
from eventrunner.state.index import Index
from eventrunner.workspace import loader

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

log = logging.getLogger("eventrunner.engine")
_TRIM_FROM = 10_000  # input files of a call from which the heap is trimmed after it


@dataclass(slots=True)
class Attempt:
    """What the engine keeps of one attempt between its start and its end."""

    q: str
    eid: str
    values: dict[str, str]
    gathered: Gathered
    key: str
    prev: Failure | None
    attempt: int
    started: float


class Running:
    """The Engine's methods that start and end attempts (a mixin: Engine declares the state)."""

    index: Index
    ws: Workspace
    evaluator: Evaluator
    executor: Executor
    outcome: RunReport
    events: EventBus
    retry_in_run: bool  # serve's engine
    _funcs: dict[str, Callable[..., Any]]
    _heap: list[tuple[int, int, int, str, str]]
    _deferred: dict[str, list[tuple[int, int, int, str, str]]]
    _running_per_stage: dict[str, int]
    _tasks: set[asyncio.Future[Any]]  # attempts under way: executor futures, failure records
    _accepting: bool
    _wake: asyncio.Event

    _done: Callable[[asyncio.Task[None]], None]  # the Engine's: a task of its ended
    _dispatch: Callable[[], None]  # the Engine's: start what the free slots allow
    _settled: Callable[[str], None]  # run/finish.py
    _fail: Callable[..., Any]  # run/finish.py (a coroutine function)
    _manifest: Callable[..., Any]  # run/finish.py
    _commit_then_follow: Callable[..., None]  # run/finish.py

    def _start(self, q: str, eid: str, values: dict[str, str]) -> None:
        """Start one attempt (its slot is taken): inputs hashed, noted, handed to the executor."""
        # consider() just found every producer fresh; only the input files and hashes are needed.
        func, executor = self._loaded(q), self.ws.settings.runtime.executor
        incremental = incremental_possible(self.evaluator, q, eid, values, func, executor)
        # An aggregate's cert holds its members as they are when every change reaches the engine
        # as a target: in a run (its look saw every file), not under serve (outputs are not
        # watched). There a full call takes its members from the cert only when its worker
        # hashes what it reads (run/checked.py); else it hashes every member afresh first.
        from_cert = (
            incremental
            or not self.retry_in_run
            or worker_checks(func, self.ws.graph.stages[q], executor)
        )
        gathered = self.evaluator.gather_for_run(q, eid, values, from_cert, incremental)
        key = self.evaluator.attempt_key(q, gathered.hashes())
        prev = self.index.failures[q].get(eid)
        attempt = (prev.attempts if prev is not None and prev.key == key else 0) + 1
        run = Attempt(q, eid, values, gathered, key, prev, attempt, time.time())
        try:
            # Noted before the call: an attempt that takes the process down counts after a
            # restart (state/recovery.py). A note that cannot be written fails the attempt.
            self.index.attempt_started(q, eid, key, attempt, run.started)
            self.outcome.executed += 1
            self.outcome.ran.add((q, eid))
            if self.events.listening:  # else not even built (per execution)
                self.events.emit(Started(stage=q, entity=eid, attempt=attempt))
            call = self._call(q, eid, values, gathered.files, attempt)
            # The executor bounds the handler's own run time (stage.timeout) and fails the
            # future with HandlerTimeout or WorkerLost; cancelling the future stops the call.
            future = self.executor.submit(call)
        except Exception as exc:
            self._failed(run, exc)
            return
        self._tasks.add(future)
        future.add_done_callback(functools.partial(self._finished, run))

    def _finished(self, run: Attempt, future: asyncio.Future[Written]) -> None:
        """The executor's future resolved: commit the outputs, or record the failure."""
        self._tasks.discard(future)
        if future.cancelled():  # stop() past its grace: the state stays stale
            self._ended(run)
            return
        exc = future.exception()
        if exc is not None:
            self._failed(run, exc)
            return
        written = future.result()
        try:
            inputs = self.evaluator.run_inputs(run.q, run.eid, run.gathered, written.inputs)
            manifest = self._manifest(
                run.q, run.eid, run.values, inputs, written, run.started, run.attempt
            )
        except Exception:
            log.exception("internal error in a job")
            written.discard()
            self._ended(run)
            return
        self._ended(run, committing=True)
        # joins the next group commit (one sync for many runs); no task waits on it
        self._commit_then_follow(manifest, written, run.key, run.prev)
        if len(run.gathered.files) >= _TRIM_FROM:
            heap.trim()  # the call's reading of its members left free pages (8 MB at 100,000)
        if self._accepting:
            self._dispatch()  # the freed slot's next run starts now, not a loop turn later

    def _failed(self, run: Attempt, exc: BaseException) -> None:
        """Record a failed attempt; it keeps its slot until the record is written, as a run
        did when it was one task."""
        task = asyncio.ensure_future(self._record_failure(run, exc))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _record_failure(self, run: Attempt, exc: BaseException) -> None:
        try:
            await self._fail(run.q, run.eid, run.key, run.prev, exc, run.started)
        finally:
            self._ended(run)

    def _ended(self, run: Attempt, committing: bool = False) -> None:
        """The attempt's handler is done: free its slot; unless it commits, it is out of flight."""
        self.index.handler_returned(run.q, run.eid)
        if not committing:
            self.index.attempt_ended(run.q, run.eid)
            self._settled(run.q)
        self._running_per_stage[run.q] -= 1
        for item in self._deferred.pop(run.q, []):
            heapq.heappush(self._heap, item)
        if not committing or not self._accepting:
            self._wake.set()  # else _finished dispatches itself

    def _loaded(self, q: str) -> Callable[..., Any] | None:
        """The handler, or None if it cannot be loaded (the call itself then fails)."""
        try:
            return self._handler(q)
        except Exception:
            return None

    def _handler(self, q: str) -> Callable[..., Any]:
        func = self._funcs.get(q)
        if func is None:
            func = self._funcs[q] = loader.load(self.ws.handlers[q])
        return func

    def _call(
        self, q: str, eid: str, values: dict[str, str], files: list[Any], attempt: int
    ) -> Call:
        """What the executor runs for one attempt."""
        func = self._handler(q)
        executor = self.ws.settings.runtime.executor
        return Call(
            stage=self.ws.graph.stages[q],
            entity=eid,
            handler=self.ws.handlers[q],
            func=func,
            # Marked for an incremental fan-in call when the handler takes Changes (issue 15).
            files=mark_for_call(self.evaluator, q, eid, values, files, func, executor),
            values=values,
            attempt=attempt,
            root=self.index.root,
            code=self.ws.code[q],
        )


def worker_checks(func: Callable[..., Any] | None, stage: Stage, executor: str) -> bool:
    """True when a full call of `stage` hashes its fan-in members in the worker (run/checked.py):
    a handler on the thread or process executor that takes each fan-in member's content. A
    `Path` member is the handler's to read (hashing it would read it once more), a `Changes`
    input's full call is not checked, and a Dask task reads on another host."""
    if func is None or executor == "dask":
        return False
    names = changes_inputs(func)
    for inp in stage.inputs:
        if inp.aggregated and (
            inp.name in names or member_type(annotation_of(func, inp.name)) in PATHS
        ):
            return False
    return True
