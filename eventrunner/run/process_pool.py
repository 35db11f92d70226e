"""The process executor (`executor = "process"`): sync handlers run in worker processes.

CPU-bound handlers scale past the GIL, and a handler can be killed: one over its timeout (or
cancelled) has its worker SIGKILLed. Each worker owns a pipe and runs one call at a time, so a
worker that dies (os._exit, a segfault, the OOM killer) fails the one call it was running,
with the exit code or signal as the reason, and a new worker takes its place at the next call;
concurrent.futures' pool, by contrast, breaks for good and fails every call after it.
Workers are started with forkserver: forking a process that runs threads and an event loop
is unsafe. They ignore SIGINT, so a Ctrl-C reaches only the server, which stops them itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import pickle
import signal
import traceback
import weakref
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from eventrunner.core.errors import WorkerLost
from eventrunner.run.capture import attach, output_of
from eventrunner.run.executors import Call, Executor, as_failure, run_coroutine
from eventrunner.run.invoke import Written, call_by_ref

log = logging.getLogger("eventrunner.executor")


class RemoteTraceback(Exception):
    """The worker's traceback, chained to a handler error raised in a worker process."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Job:
    __slots__ = ("call", "future", "timer")

    def __init__(self, call: Call, future: asyncio.Future[Written]) -> None:
        self.call = call
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class _Worker:
    """One worker process, its end of the pipe and the call it runs (None when idle)."""

    __slots__ = ("conn", "gone", "job", "process", "reading")

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.job: _Job | None = None
        self.gone = False  # killed or dead: not counted any more, its sentinel not yet seen
        self.reading = True  # its pipe is watched


class ProcessExecutor(Executor):
    """Up to `size` worker processes, started on demand and replaced when one dies."""

    def __init__(self, size: int, *, context: str = "forkserver") -> None:
        super().__init__()
        self.size = max(1, size)
        self._mp: Any = multiprocessing.get_context(context)
        self._workers: set[_Worker] = set()  # live: idle or running a call
        self._unreaped: set[_Worker] = set()  # every process whose end we have not seen
        self._idle: list[_Worker] = []
        self._waiting: deque[_Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        _LIVE.add(self)

    @property
    def capacity(self) -> int:
        return self.size

    def submit(self, call: Call) -> asyncio.Future[Written]:
        if call.is_async:
            return run_coroutine(call)
        self._refuse_if_closed()
        self._loop = loop = asyncio.get_running_loop()
        job = _Job(call, loop.create_future())
        job.future.add_done_callback(lambda _f: self._resolved(job))
        self._waiting.append(job)
        self._pump()
        return job.future

    async def _release(self) -> None:
        """Cancel waiting calls, kill running ones, let idle workers exit, reap them all."""
        while self._waiting:
            self._waiting.popleft().future.cancel()
        for w in list(self._workers):
            if w.job is not None:
                self._kill(w)
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        workers = list(self._unreaped)
        for w in workers:
            self._unwatch(w, sentinel=True)
        await asyncio.to_thread(_join, [w.process for w in workers])
        for w in workers:
            w.conn.close()
        self._unreaped.clear()
        _LIVE.discard(self)

    # -- dispatch ---------------------------------------------------------------------------
    def _pump(self) -> None:
        """Hand waiting calls to idle workers, starting workers up to `size`."""
        while self._waiting and not self._closed:
            if self._idle:
                w = self._idle.pop()
            elif len(self._workers) < self.size:
                try:
                    w = self._spawn()
                except OSError as exc:  # out of processes or descriptors: fail this call only
                    job = self._waiting.popleft()
                    job.future.set_exception(WorkerLost(f"cannot start a worker process: {exc}"))
                    continue
            else:
                return
            job = self._waiting.popleft()
            c = job.call
            try:
                w.conn.send((c.stage, c.handler, c.files, c.values, c.attempt, c.root))
            except OSError:  # it died while idle; its sentinel will reap it
                self._waiting.appendleft(job)
                self._retire(w)
                continue
            w.job = job

    def _spawn(self) -> _Worker:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(
            target=_worker_main, args=(child,), name="eventrunner-worker", daemon=False
        )
        process.start()
        child.close()  # the worker holds the only other end now
        w = _Worker(process, parent)
        self._workers.add(w)
        self._unreaped.add(w)
        assert self._loop is not None
        self._loop.add_reader(parent.fileno(), self._readable, w)
        self._loop.add_reader(process.sentinel, self._exited, w)
        return w

    def _readable(self, w: _Worker) -> None:
        """A message from a worker: its call started, returned or raised."""
        try:
            while w.reading and w.conn.poll():
                self._message(w, w.conn.recv())
        except (EOFError, OSError):  # it is ending: its sentinel says how
            self._unwatch(w)

    def _message(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        job = w.job
        if job is None:
            return
        if msg[0] == "started":
            timeout = job.call.timeout
            if timeout is not None and not job.future.done():
                assert self._loop is not None
                job.timer = self._loop.call_later(timeout, self._expire, w, job)
            return
        w.job = None
        if job.timer is not None:
            job.timer.cancel()
        if msg[0] == "ok":
            if job.future.done():
                msg[1].discard()
            else:
                job.future.set_result(msg[1])
        elif not job.future.done():
            error: BaseException = msg[1]
            error.__cause__ = RemoteTraceback(msg[2])
            job.future.set_exception(attach(as_failure(error), msg[3]))
        if not w.gone:
            self._idle.append(w)
        self._pump()

    # -- losing workers -------------------------------------------------------------------------
    def _expire(self, w: _Worker, job: _Job) -> None:
        if w.job is job and not job.future.done():
            log.warning(
                "%s: over its %ss timeout; its worker process is killed", job.call, job.call.timeout
            )
            self._kill(w)
            job.future.set_exception(job.call.timed_out())

    def _resolved(self, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if not job.future.cancelled():
            return
        if job in self._waiting:
            self._waiting.remove(job)
            return
        for w in self._workers:
            if w.job is job:
                self._kill(w)
                break

    def _kill(self, w: _Worker) -> None:
        """SIGKILL a worker running a call given up on; a new one is started for the next call."""
        w.job = None
        self._retire(w)
        self._unwatch(w)
        try:
            w.process.kill()
        except (OSError, ValueError):
            pass
        self._pump()

    def _exited(self, w: _Worker) -> None:
        """The worker's process ended: fail the call it was running (if any) and reap it."""
        self._retire(w)  # first: the drain below must not hand it another call
        try:  # a result it sent just before it ended still counts
            while w.reading and w.job is not None and w.conn.poll():
                self._message(w, w.conn.recv())
        except (EOFError, OSError):
            pass
        self._unwatch(w, sentinel=True)
        job, w.job = w.job, None
        w.process.join(0)  # its end is known (the sentinel): this only reaps
        self._unreaped.discard(w)
        w.conn.close()
        if job is not None and not job.future.done():
            reason = _exit_reason(w.process.exitcode)
            log.error(
                "%s: its worker process died (%s); a new worker replaces it", job.call, reason
            )
            job.future.set_exception(
                WorkerLost(f"the worker process running the handler died ({reason})")
            )
        self._pump()

    def _retire(self, w: _Worker) -> None:
        """Stop counting a worker or handing it calls (it is ending)."""
        w.gone = True
        self._workers.discard(w)
        if w in self._idle:
            self._idle.remove(w)

    def _unwatch(self, w: _Worker, *, sentinel: bool = False) -> None:
        """Stop watching its pipe (and its sentinel); each fd is removed once, while still open."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if w.reading:
            w.reading = False
            loop.remove_reader(w.conn.fileno())
        if sentinel and w in self._unreaped:
            loop.remove_reader(w.process.sentinel)


_LIVE: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


@atexit.register
def _kill_workers() -> None:
    """At exit without close(): kill the workers, or multiprocessing would wait for them.
    (Registered after multiprocessing's own exit hook, so it runs first.)"""
    for executor in list(_LIVE):
        for w in executor._unreaped:
            with contextlib.suppress(OSError, ValueError):
                w.process.kill()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _join(processes: list[Any]) -> None:
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def _worker_main(conn: Connection) -> None:
    """A worker process: run calls from the pipe until told to stop or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        stage, ref, files, values, attempt, root = msg
        if stage.timeout is not None:
            conn.send(("started",))
        try:
            written = call_by_ref(stage, ref, files, values, attempt, root)
        except BaseException as exc:  # the handler's error, sent back as the call's result
            text = "".join(traceback.format_exception(exc))
            conn.send(("error", _picklable(exc), text, output_of(exc)))
        else:
            conn.send(("ok", written))


def _picklable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a HandlerError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        from eventrunner.core.errors import HandlerError

        return HandlerError(f"{type(exc).__name__}: {exc} (not picklable)")
    return exc
