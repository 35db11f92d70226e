"""The thread executor: sync handlers run in worker threads, never on the event loop.

A thread cannot be stopped from outside, so a handler still running at its timeout (or at a
cancel) keeps its thread: the thread is abandoned, the call fails with `HandlerTimeout`, and a
new thread takes the abandoned one's place, so a hung handler costs one thread, not a slot.
At most `max_abandoned` threads are replaced; past that, each further hung handler lowers
`capacity` by one (with an error in the log) until one of them returns. An abandoned thread
whose handler returns throws its result away (temps removed) and exits, or takes its slot
back if it had not been replaced. Threads are daemons: an abandoned one never holds up exit.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable

from eventrunner.run.affinity import OneCore
from eventrunner.run.executors import Call, Executor, as_failure, run_coroutine
from eventrunner.run.invoke import Written, prepare_and_call

log = logging.getLogger("eventrunner.executor")

MAX_ABANDONED = 16  # hung handler threads replaced before capacity starts to shrink
# Read-ahead: while calls take under QUICK_S on average, each serving thread may have
# READ_AHEAD calls more queued behind it. A short call's thread would otherwise idle for the
# trip to the loop and back (result posted, committed, next call prepared), which at -j2 cost
# ~12% of a cold run's wall time; a slow call's queue would only hold states that show as
# running early and count as attempted if the process dies.
QUICK_S = 0.005
READ_AHEAD = 3


class _State(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3  # returned (result on its way to the loop) or dropped before it started
    ABANDONED = 4  # timed out or cancelled while running; its thread is no longer ours


class _Job:
    """One sync call in flight; `state` changes under the executor's lock only."""

    __slots__ = ("began", "call", "future", "loop", "on_done", "replaced", "state", "timer")

    def __init__(
        self, call: Call, future: asyncio.Future[Written], loop: asyncio.AbstractEventLoop
    ):
        self.call = call
        self.future = future
        self.loop = loop
        self.state = _State.QUEUED
        self.timer: asyncio.TimerHandle | None = None
        self.replaced = False  # abandoned and a new thread started in its place
        self.began = 0.0
        self.on_done: Callable[[asyncio.Future[Written]], None] | None = None


class ThreadExecutor(Executor):
    """`size` worker threads; hung handlers' threads are abandoned and replaced (see module)."""

    def __init__(
        self, size: int, *, max_abandoned: int = MAX_ABANDONED, one_core: OneCore | None = None
    ) -> None:
        super().__init__()
        # Pinned while calls are quick (affinity.py), under the lock: one transition at a time.
        self.one_core = one_core
        self.size = max(1, size)
        self.max_abandoned = max_abandoned
        self.abandoned = 0  # ever abandoned (timeouts and cancels)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._serving = 0  # threads taking jobs (not abandoned)
        self._hung = 0  # abandoned threads whose handler has not returned
        self._unreplaced = 0  # of those, the ones no new thread stands in for
        self._names = 0
        self._started = False
        self._mail = Mailbox()  # results and timer starts, to the loop in batches
        self._mean = 1.0  # moving mean of the calls' run times (s): no read-ahead at first
        self._queued: set[_Job] = set()  # accepted, not taken by a thread yet

    @property
    def capacity(self) -> int:
        return self.size - self._unreplaced

    @property
    def read_ahead(self) -> int:
        return READ_AHEAD * self.capacity if self._mean < QUICK_S else 0

    def drop_queued(self) -> int:
        with self._lock:
            queued = [job for job in self._queued if job.state is _State.QUEUED]
        for job in queued:
            job.future.cancel()  # _resolved marks it done; its thread skips it
        return len(queued)

    def submit(self, call: Call) -> asyncio.Future[Written]:
        if call.is_async:
            return run_coroutine(call)
        self._refuse_if_closed()
        loop = asyncio.get_running_loop()
        job = _Job(call, loop.create_future(), loop)
        job.on_done = lambda _f: self._resolved(job)
        job.future.add_done_callback(job.on_done)
        if not self._started:
            self._started = True
            with self._lock:
                self._serving += self.size
            for _ in range(self.size):
                self._start_thread()
        with self._lock:
            self._queued.add(job)
        self._queue.put(job)
        return job.future

    async def _release(self) -> None:
        """Ask idle threads to exit; running handlers are abandoned (their threads are daemons).
        Whatever the process does next has its cores back."""
        with self._lock:
            serving = self._serving
            if self.one_core is not None:
                self.one_core.release()
        for _ in range(serving):
            self._queue.put(None)

    # -- on the worker threads --------------------------------------------------------------
    def _start_thread(self) -> None:
        self._names += 1
        name = f"eventrunner-handler-{self._names}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._queued.discard(job)
                if job.state is not _State.QUEUED:  # cancelled while it waited
                    continue
                job.state = _State.RUNNING
                job.began = time.monotonic()
            if job.call.timeout is not None and not self._mail.post(job.loop, self._arm, job):
                continue
            written, error = self._call(job.call)
            with self._lock:
                self._mean += 0.1 * (time.monotonic() - job.began - self._mean)
                if self.one_core is not None and self.one_core.pinned != (self._mean < QUICK_S):
                    (self.one_core.release if self.one_core.pinned else self.one_core.pin)()
                abandoned = job.state is _State.ABANDONED
                job.state = _State.DONE
                rejoin = abandoned and not job.replaced and not self._closed
                if abandoned:
                    self._hung -= 1
                    if rejoin:
                        self._unreplaced -= 1
                        self._serving += 1
            if not abandoned:
                lost = written.discard if written is not None else None
                posted = self._mail.post(job.loop, self._deliver, job, written, error, lost=lost)
                if not posted and written is not None:
                    written.discard()
                continue
            if written is not None:
                written.discard()
            log.warning(
                "%s: abandoned handler returned after %.1fs; its result was discarded",
                job.call,
                time.monotonic() - job.began,
            )
            if not rejoin:
                return  # a replacement serves in its place
            self._mail.post(job.loop, self._capacity_changed)

    @staticmethod
    def _call(call: Call) -> tuple[Written | None, Exception | None]:
        try:
            written = prepare_and_call(
                call.stage, call.func, call.files, call.values, call.attempt, call.root
            )
        except BaseException as exc:  # the handler's error is the call's result
            return None, as_failure(exc)
        return written, None

    # -- on the loop ---------------------------------------------------------------------------
    def _arm(self, job: _Job) -> None:
        """The call started in a worker: its timeout runs from then (not from submit)."""
        if job.state is _State.RUNNING and not job.future.done():
            assert job.call.timeout is not None
            left = job.call.timeout - (time.monotonic() - job.began)
            job.timer = job.loop.call_later(max(0.0, left), self._expire, job)

    def _expire(self, job: _Job) -> None:
        if not job.future.done() and self._abandon(job, "still running at its timeout"):
            job.future.set_exception(job.call.timed_out())

    def _deliver(self, job: _Job, written: Written | None, error: Exception | None) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if job.future.done():  # cancelled after the handler returned: nothing of it is kept
            if written is not None:
                written.discard()
        else:
            # Resolved here, not cancelled: nothing for _resolved to do (one callback less).
            if job.on_done is not None:
                job.future.remove_done_callback(job.on_done)
                job.on_done = None  # it refers to the job: a cycle for the collector else
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(written)  # type: ignore[arg-type]

    def _resolved(self, job: _Job) -> None:
        """The future is done; if it was cancelled, drop or abandon the call behind it."""
        job.on_done = None  # (see _deliver)
        if job.timer is not None:
            job.timer.cancel()
        if job.future.cancelled():
            with self._lock:
                if job.state is _State.QUEUED:
                    job.state = _State.DONE
                    return
            self._abandon(job, "cancelled")

    def _abandon(self, job: _Job, why: str) -> bool:
        """Give up the running call's thread and stand a new one in for it (up to the cap).
        False when the call had already returned (its result is on the way)."""
        with self._lock:
            if job.state is not _State.RUNNING:
                return False
            job.state = _State.ABANDONED
            self.abandoned += 1
            self._hung += 1
            job.replaced = self._hung <= self.max_abandoned and not self._closed
            if not job.replaced:
                self._serving -= 1
                self._unreplaced += 1
            hung, unreplaced = self._hung, self._unreplaced
        if job.replaced:
            self._start_thread()
            log.warning(
                "%s: sync handler %s; its thread is abandoned and replaced "
                "(%d abandoned thread(s) running, at most %d replaced)",
                job.call,
                why,
                hung,
                self.max_abandoned,
            )
        elif not self._closed:
            log.error(
                "%s: sync handler %s; %d abandoned handler threads are running, more than the "
                "%d replaced, so %d of %d slots are lost until they return. Fix the handler or "
                'use executor = "process", where a hung handler is killed',
                job.call,
                why,
                hung,
                self.max_abandoned,
                unreplaced,
                self.size,
            )
            self._capacity_changed()
        return True


_Posted = tuple[Callable[..., object], tuple[object, ...], Callable[[], object] | None]


class Mailbox:
    """Calls from the worker threads to the loop, run there in batches: one
    call_soon_threadsafe (a write to the loop's self-pipe, a wake-up, a read) serves every
    call posted before the loop got round to the first. In a cold run the loop is the busy
    thread, so results that come in while it works ride along with the first one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[asyncio.AbstractEventLoop, list[_Posted]] = {}

    def post(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., object],
        *args: object,
        lost: Callable[[], object] | None = None,
    ) -> bool:
        """Have the loop call fn(*args) soon; False when the loop is closed (a run that ended
        meanwhile). `lost` is called (here) if the call is dropped with a later one's closed
        loop instead."""
        with self._lock:
            box = self._boxes.get(loop)
            if box is not None:  # a batch is already on its way
                box.append((fn, args, lost))
                return True
            self._boxes[loop] = [(fn, args, lost)]
        try:
            loop.call_soon_threadsafe(self._run, loop)
        except RuntimeError:
            with self._lock:
                dropped = self._boxes.pop(loop, [])
            for _fn, _args, on_lost in dropped[1:]:
                if on_lost is not None:
                    on_lost()
            return False
        return True

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            box = self._boxes.pop(loop, [])
        for fn, args, _ in box:
            try:
                fn(*args)
            except Exception:  # as the loop would for a callback of its own: logged, go on
                log.exception("internal error in an executor callback")
