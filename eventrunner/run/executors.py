"""Where handler calls run: the executor interface, and the in-loop path for async handlers.

The engine keeps the queue, priorities, per-stage concurrency, retries and commits; an executor
only runs one handler call (read the inputs, call the handler, write its outputs to temp files)
and hands back the `Written` result or the error. `thread_pool.ThreadExecutor` (the default)
and `process_pool.ProcessExecutor` (`executor = "process"`) implement it, and so does the
distributed `dask_pool.DaskExecutor` (`executor = "dask"`), through `pools.make_executor` or
`Engine(executor=...)`.

The contract, for every implementation:

- `submit(call)` is called on the event loop's thread and returns at once with an asyncio
  future that resolves to the call's `Written` or fails with the error to record (the
  handler's own exception, `HandlerTimeout`, `WorkerLost`, ...). It never blocks the loop.
  The error is always an `Exception`: a handler's SystemExit or KeyboardInterrupt is passed
  through `as_failure`, since raised into the engine it would stop the whole process.
- `capacity` is how many calls may run at once now. The engine never has more calls
  outstanding than `capacity + read_ahead`, so an executor queues little and the engine's
  priorities decide what runs.
  When capacity changes on its own (a worker lost for good, one returned, a cluster scaled),
  the executor calls `_capacity_changed()` so the engine dispatches again. `read_ahead` is
  how many calls more it accepts queued, to start the moment a worker frees: 0 unless its
  calls are short enough that the trip back to the loop for the next one would idle the
  worker (thread_pool.py). Queued calls are noted as started; `drop_queued()` drops them.
- Timeouts: `call.stage.timeout` bounds the call's own run time, measured from the moment a
  worker starts it; time spent waiting for a worker never counts. When it expires the future
  fails with `HandlerTimeout` and the call's slot is free again (capacity stays as it was):
  the executor kills the worker, or, when it cannot (a thread), abandons it and starts a
  replacement, up to a cap, with a warning in the log.
- Cancellation: `cancel(future)` (or cancelling the future) stops the call: killed where it
  runs, or abandoned as above. The engine cancels only at shutdown, past the grace period.
- Lost workers: a worker that dies (os._exit, a signal, out of memory) fails that call only,
  with `WorkerLost` naming the exit code or signal; the executor replaces the worker and
  later calls run normally.
- Late results: a call that finishes after its future was resolved (timed out, cancelled) has
  its result thrown away: its temp files are removed and nothing of it reaches the commit.
  A retry of the same (stage, entity) may meanwhile run elsewhere; both write distinct temps.
- `start()` (awaited by the engine before its first call) connects or spawns what the executor
  needs, raising `ExecutorUnavailable` when it cannot; the local executors need nothing.
- Code identity: `call.code` is the identity the coordinator records for the call's output;
  an executor that loads the handler from another copy of its code (a remote worker) refuses
  the call with `CodeChanged` when that copy's identity differs.
- Shutdown: `drop_queued()` cancels calls accepted but not started (the engine then counts
  the stop as not clean: their states stay stale); `close()` cancels what is still running
  or queued and releases workers; it is idempotent.
  `abandoned` counts calls whose thread could not be stopped (the CLI then exits without
  waiting for them).

In a worker elsewhere, `invoke.call_by_ref(stage, handler, files, values, attempt, root)`
(every argument a field of `Call`, all picklable) does the whole call, importing the handler
by path; it returns `Written` (temp files beside the final outputs, their hashes), which the
engine commits. Async handlers can stay on the loop (`run_coroutine`), as both local
executors do.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventrunner.core.errors import HandlerError, HandlerTimeout
from eventrunner.core.graph import Stage
from eventrunner.run.capture import attach, capturing
from eventrunner.run.checked import Checked, as_read
from eventrunner.run.inputfile import InputFile
from eventrunner.run.invoke import Written, build_kwargs, make_context, store_result, wants_ctx
from eventrunner.run.tasks import ClosesOnce
from eventrunner.workspace.loader import HandlerRef

if TYPE_CHECKING:
    pass

log = logging.getLogger("eventrunner.executor")


@dataclass(frozen=True, slots=True)
class Call:
    """One handler call for one (stage, entity): everything a worker needs to run it.

    `func` is the handler as loaded in this process (in-process executors call it); an executor
    running elsewhere imports `handler` itself. Every field but `func` pickles.
    """

    stage: Stage
    entity: str  # the entity id, for logs and errors
    handler: HandlerRef
    func: Callable[..., Any]
    files: list[InputFile]
    values: dict[str, str]
    attempt: int
    root: Path
    code: str = ""  # the code identity the coordinator records for the output ("": unchecked)

    @property
    def timeout(self) -> float | None:
        """Seconds the call may run once started (None: no limit)."""
        return self.stage.timeout

    @property
    def is_async(self) -> bool:
        """An `async def` handler: it runs on the event loop, not in a worker."""
        return inspect.iscoroutinefunction(self.func)

    def timed_out(self) -> HandlerTimeout:
        """The error a call over its timeout fails with."""
        return HandlerTimeout(f"timed out after {self.stage.timeout}s")

    def __str__(self) -> str:
        return f"{self.stage.qualname} {self.entity}"


class Executor(ClosesOnce, ABC):
    """Runs handler calls somewhere; see the module docstring for what each method guarantees."""

    abandoned: int = 0  # calls left running in a thread that could not be stopped

    def __init__(self) -> None:
        self._watchers: list[Callable[[], None]] = []

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many calls may run at once now."""

    @property
    def read_ahead(self) -> int:
        """How many calls more than `capacity` it takes now, queued (see the module)."""
        return 0

    @abstractmethod
    def submit(self, call: Call) -> asyncio.Future[Written]:
        """Start `call` (on the loop's thread); the future holds its result or its error."""

    async def start(self) -> None:
        """Connect or spawn what calls need (before the first submit); safe to call twice."""
        return  # the local executors start their workers on demand

    def cancel(self, future: asyncio.Future[Written]) -> None:
        """Stop the call behind `future`; the same as `future.cancel()`."""
        future.cancel()

    def drop_queued(self) -> int:
        """Shutdown began: cancel the calls that have not started (their futures), so only
        running ones use the grace period; how many were dropped. The process executor
        starts what it accepts at once: nothing to drop."""
        return 0

    @abstractmethod
    async def _release(self) -> None:
        """What close() does, once: cancel waiting calls, stop running ones, free the workers."""

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RuntimeError("executor is closed")

    def on_capacity_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop's thread) whenever `capacity` changes on its own."""
        self._watchers.append(callback)

    def _capacity_changed(self) -> None:
        for callback in tuple(self._watchers):
            callback()


def as_failure(exc: BaseException) -> Exception:
    """The error to record for what a sync handler raised: itself when it is an ordinary
    Exception, else a HandlerError naming it (SystemExit, KeyboardInterrupt, StopIteration
    cannot travel through an asyncio future without stopping or breaking the loop)."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    error = HandlerError(f"the handler raised {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def run_coroutine(call: Call) -> asyncio.Future[Written]:
    """An async handler's call, on the running loop: inputs read and outputs written in a
    thread, the coroutine awaited with the stage's timeout (cancelled when it expires)."""
    return asyncio.ensure_future(_run_coroutine(call))


async def _run_coroutine(call: Call) -> Written:
    stage, func, root = call.stage, call.func, call.root
    ctx = make_context(stage, call.values, call.attempt, root)
    with capturing() as capture:  # this task's context only: other tasks print as before
        ctx.log.sink = capture
        try:
            checked: Checked = {}  # a full fan-in call's members as read (run/checked.py)
            kwargs = await asyncio.to_thread(
                build_kwargs, stage, func, call.files, root, checked=checked
            )
            coro = func(ctx, **kwargs) if wants_ctx(func) else func(**kwargs)
            try:
                result = await asyncio.wait_for(coro, stage.timeout)
            except TimeoutError:
                raise call.timed_out() from None
            written = await asyncio.to_thread(store_result, stage, call.values, result, ctx, root)
        except BaseException as exc:
            _discard_temp(ctx.output_path)
            attach(exc, capture.text())
            raise
    written.output = capture.text()
    if checked:
        written.inputs = as_read(call.files, checked)
    return written


def _discard_temp(path: Path | None) -> None:
    """Remove what a failed async handler left at ctx.output_path (a temp never renamed)."""
    if path is not None and (path.exists() or path.is_symlink()):
        Written([(path, path)], {}).discard()
