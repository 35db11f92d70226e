"""The Dask executor (`executor = "dask"`): handler calls run on a Dask distributed cluster.

The coordinator (`serve` or `run`) keeps the queue, priorities, per-stage concurrency, retries
and commits; Dask only runs handler calls. Each submission is one Dask task with a unique key
(`pure=False`, no Dask retries, the scheduler's allowed-failures set to 0), so every attempt is
counted here. Inputs go out as bytes and outputs come back as bytes, written to temps and
committed here (dask_wire); the handler code goes out as a hashed bundle, sent once per code
identity and checked on the worker (dask_task).

Failures: a worker that dies mid-call fails that call with `WorkerLost` (the retry runs
wherever Dask puts it); a lost connection to the scheduler resubmits what was in flight,
counting nothing; a stage's timeout runs from the worker's "started" event and is enforced
here: the call fails with `HandlerTimeout` and its late result is dropped (a Dask worker
cannot stop a thread, so the handler runs on there until it returns). Small calls of one
stage (no timeout, measured under ~10 ms) are grouped into one task, up to a batch that runs
~50 ms, so the scheduler's ~1 ms per task does not cap throughput; futures in flight stay
at two per worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventrunner.core.errors import CodeChanged, ExecutorUnavailable, HandlerError, WorkerLost
from eventrunner.run.bundle import build_bundle
from eventrunner.run.dask_task import run_batch
from eventrunner.run.dask_wire import WireCall, WireResult, error_of, pack_inputs, write_outputs
from eventrunner.run.executors import Call, Executor
from eventrunner.run.invoke import Written
from eventrunner.workspace.settings import RuntimeSettings

log = logging.getLogger("eventrunner.executor")

PER_THREAD = 2  # futures in flight per worker thread: one runs, one waits its turn
BATCH_MAX = 64  # calls in one task at most
SMALL_S = 0.01  # calls shorter than this (on average, once measured) are batched ...
BATCH_S = 0.05  # ... into tasks running about this long
WARMUP = 4  # calls of a stage measured before it is batched
WATCH_S = 1.0  # how often the cluster's workers and the connection are checked
LOST = "scheduler-connection-lost"


def require_distributed() -> None:
    """ExecutorUnavailable (exit 2) when the distributed package is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ExecutorUnavailable(
            '[runtime] executor = "dask" needs the distributed package: '
            "pip install 'eventrunner[dask]'"
        ) from None


@dataclass(eq=False)
class _Job:
    call: Call
    future: asyncio.Future[Written]
    seq: int
    solo: bool = False  # a lost batch's call: sent alone from now on
    timer: asyncio.TimerHandle | None = None
    batch: _Batch | None = None


@dataclass(eq=False)
class _Batch:
    key: str
    jobs: list[_Job]
    dask: Any = None  # its distributed Future, once submitted
    started: bool = False  # a worker said it started it


class _Pace:
    """A stage's measured call time on the workers (moving average)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0

    def add(self, seconds: float) -> None:
        self.n += 1
        self.mean = seconds if self.n == 1 else 0.8 * self.mean + 0.2 * seconds

    def batch(self) -> int:
        """Calls per task for this stage (1: not batched)."""
        if self.n < WARMUP or self.mean >= SMALL_S:
            return 1
        return max(1, min(BATCH_MAX, int(BATCH_S / max(self.mean, 1e-5))))


class DaskExecutor(Executor):
    """Runs calls on the Dask scheduler at `scheduler`, or on a local cluster of `workers`
    worker processes started here when there is none (see the module docstring)."""

    def __init__(self, *, scheduler: str | None, workers: int, shared_fs: bool) -> None:
        super().__init__()
        require_distributed()
        self.scheduler = scheduler
        self.workers = max(1, workers)
        self.shared_fs = shared_fs
        self.client: Any = None
        self.cluster: Any = None
        self.batches = 0  # tasks submitted (a batch of one is a task too)
        self.resubmitted = 0  # calls sent again after a lost scheduler or a lost batch
        self._token = secrets.token_hex(4)
        self._topic = f"eventrunner-started-{self._token}"
        self._keys = itertools.count()
        self._seq = itertools.count()
        self._waiting: dict[str, deque[_Job]] = {}
        self._inflight: dict[str, _Batch] = {}
        self._paces: dict[str, _Pace] = {}
        self._bundles: dict[Path, tuple[str, Any]] = {}
        self._bundle_lock = asyncio.Lock()
        self._codes: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = 0
        self._offered: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self._ready = False
        self._kicked = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, runtime: RuntimeSettings) -> DaskExecutor:
        """The executor `[runtime]` describes."""
        return cls(
            scheduler=runtime.dask_scheduler,
            workers=runtime.dask_workers,
            shared_fs=runtime.shared_fs,
        )

    @property
    def capacity(self) -> int:
        batch = max((p.batch() for p in self._paces.values()), default=1)
        return self._futures_limit * batch

    @property
    def _futures_limit(self) -> int:
        return max(1, PER_THREAD * self._slots)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the local cluster (no `dask_scheduler`) and connect; ExecutorUnavailable when
        the scheduler cannot be reached or the cluster does not start."""
        if self.client is not None:
            return
        _quiet_distributed()
        address = self.scheduler
        if address is None:
            address = await self._start_cluster()
        try:
            self.client = await self._connect(address)
        except Exception as exc:
            await self._close_cluster()
            setting = (
                f"[runtime] dask_scheduler = {address!r}"
                if self.scheduler
                else f"[runtime] dask_workers = {self.workers} (a local cluster)"
            )
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExecutorUnavailable(
                f"{setting}: cannot reach the Dask scheduler: {reason}"
            ) from None
        await self._refresh()
        self._ready = True
        self._watcher = asyncio.create_task(self._watch())
        log.info("dask: connected to %s (%d worker threads)", address, self._slots)

    async def _start_cluster(self) -> str:
        from distributed import LocalCluster

        try:
            self.cluster = await LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=self.workers,
                threads_per_worker=1,  # handlers are Python: one per process, past the GIL
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,
                dashboard_address=":0",
                asynchronous=True,
            )
        except Exception as exc:
            raise ExecutorUnavailable(
                f"[runtime] dask_workers = {self.workers}: the local Dask cluster did not "
                f"start: {type(exc).__name__}: {exc}"
            ) from None
        return str(self.cluster.scheduler_address)

    async def _connect(self, address: str) -> Any:
        """A client on this loop, subscribed to start events, on a scheduler that retries
        nothing (the engine counts attempts)."""
        from distributed import Client

        client = await Client(  # type: ignore[no-untyped-call]
            address, asynchronous=True, set_as_default=False
        )
        try:
            before = await client.run_on_scheduler(_no_retries())
            if before and self.cluster is None:
                log.warning(
                    "dask: the scheduler at %s retried tasks on other workers "
                    "(allowed-failures %s); set to 0, as eventrunner counts attempts itself",
                    address,
                    before,
                )
            client.subscribe_topic(self._topic, self._on_started)
        except BaseException:
            await client.close()
            raise
        return client

    def drop_queued(self) -> int:
        """Shutdown began: cancel the calls no worker has started (waiting here, or sent but
        not begun); how many. A call that starts meanwhile is abandoned like a cancel."""
        dropped = 0
        for dq in self._waiting.values():
            while dq:
                job = dq.popleft()
                dropped += not job.future.done()
                job.future.cancel()
        for batch in list(self._inflight.values()):
            if not batch.started:
                for job in batch.jobs:
                    dropped += not job.future.done()
                    job.future.cancel()
        if dropped:
            log.info("dask: shutdown: %d call(s) not started are cancelled", dropped)
        return dropped

    async def close(self) -> None:
        """Cancel queued and running calls, disconnect, stop the local cluster. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for dq in self._waiting.values():
            for job in dq:
                job.future.cancel()
        self._waiting.clear()
        for batch in list(self._inflight.values()):
            for job in batch.jobs:
                job.future.cancel()
        for task in [*self._tasks, *([self._watcher] if self._watcher else [])]:
            task.cancel()
        for task in [*self._tasks, *([self._watcher] if self._watcher else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        await self._close_cluster()

    async def _close_cluster(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            with contextlib.suppress(Exception):
                await cluster.close()

    # -- calls --------------------------------------------------------------------------------
    def submit(self, call: Call) -> asyncio.Future[Written]:
        if self._closed:
            raise RuntimeError("executor is closed")
        job = _Job(call, asyncio.get_running_loop().create_future(), next(self._seq))
        job.future.add_done_callback(lambda _f: self._resolved(job))
        self._waiting.setdefault(call.stage.qualname, deque()).append(job)
        self._kick()
        return job.future

    def _kick(self) -> None:
        """Pump at the next loop turn: calls submitted together can share a task."""
        if not self._kicked and not self._closed:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Send waiting calls, best first, while futures in flight stay under the limit."""
        self._kicked = False
        while self._ready and not self._closed and len(self._inflight) < self._futures_limit:
            q = self._best_stage()
            if q is None:
                return
            dq = self._waiting[q]
            free = self._futures_limit - len(self._inflight)
            size = 1 if dq[0].solo else self._batch_size(dq[0].call, len(dq), free)
            jobs = [dq.popleft() for _ in range(min(size, len(dq)))]
            batch = _Batch(f"eventrunner-{q}-{self._token}-{next(self._keys)}", jobs)
            for job in jobs:
                job.batch = batch
            self._inflight[batch.key] = batch
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _best_stage(self) -> str | None:
        """The stage whose first waiting call comes first (priority, depth, then order)."""
        best: tuple[int, int, int] | None = None
        found = None
        for q, dq in self._waiting.items():
            while dq and dq[0].future.done():  # cancelled while it waited
                dq.popleft()
            if dq:
                stage = dq[0].call.stage
                rank = (-stage.priority, stage.depth, dq[0].seq)
                if best is None or rank < best:
                    best, found = rank, q
        return found

    def _batch_size(self, call: Call, waiting: int, free: int) -> int:
        if call.timeout is not None:
            return 1  # a timeout is per call: its task must start with it
        pace = self._paces.get(call.stage.qualname)
        want = pace.batch() if pace is not None else 1
        return max(1, min(want, -(-waiting // max(1, free))))  # idle futures first

    async def _run(self, batch: _Batch) -> None:
        """Pack, submit, await and deliver one task's calls."""
        try:
            results = await self._submit(batch)
            if results is not None:
                await self._deliver(batch, results)
        except asyncio.CancelledError:
            if not self._closed:
                raise
        except Exception as exc:
            self._fail_dask(batch, exc)
        finally:
            self._inflight.pop(batch.key, None)
            if not self._closed:
                self._kick()

    async def _submit(self, batch: _Batch) -> list[WireResult] | None:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        first = batch.jobs[0].call
        digest, bundle = await self._bundle(first)
        wires, blobs = await asyncio.to_thread(self._pack, batch, digest)
        live = [w for w in wires if w is not None]
        if not live:
            return None
        client = self.client
        scattered = await client.scatter(blobs, hash=False) if blobs else {}
        stage = first.stage
        batch.dask = client.submit(
            run_batch,
            batch.key,
            self._topic,
            live,
            {digest: bundle},
            scattered,
            key=batch.key,
            pure=False,
            retries=0,
            resources=dict(stage.resources) or None,
            priority=stage.priority,
        )
        self.batches += 1
        self._warn_resources(first)
        try:
            results: list[WireResult] = await batch.dask
        except FutureCancelledError as exc:
            if exc.reason == LOST:
                self._requeue(batch, "the connection to the scheduler was lost")
            return None  # else: cancelled by us (timeout or cancel), the calls are resolved
        except KilledWorker as exc:
            self._worker_lost(batch, exc)
            return None
        return results

    def _pack(self, batch: _Batch, digest: str) -> tuple[list[WireCall | None], dict[str, bytes]]:
        """(In a thread.) Each live call's wire form; a call whose inputs cannot be read fails."""
        wires: list[WireCall | None] = []
        blobs: dict[str, bytes] = {}
        for i, job in enumerate(batch.jobs):
            c = job.call
            key = batch.key if len(batch.jobs) == 1 else f"{batch.key}-{i}"
            try:
                payload = pack_inputs(
                    c.stage, c.files, c.values, c.root, self.shared_fs, blobs, f"{key}:"
                )
            except OSError as exc:
                wires.append(None)
                _threadsafe(job.future, exc)
                continue
            wires.append(
                None
                if job.future.done()
                else WireCall(
                    key=key,
                    stage=c.stage,
                    spec=c.handler.spec,
                    bundle=digest,
                    module=c.handler.path.relative_to(c.handler.root).as_posix(),
                    dotted=c.handler.module,
                    function=c.handler.function,
                    code=c.code,
                    files=c.files,
                    payload=payload,
                    values=c.values,
                    attempt=c.attempt,
                    shared_root=str(c.root) if self.shared_fs else None,
                )
            )
        return wires, blobs

    async def _bundle(self, call: Call) -> tuple[str, Any]:
        """The digest and the scattered bytes of the bundle holding the call's handler; made
        again when the stage's code identity moved on (a reload) or a worker saw an edit."""
        root = call.handler.root
        q = call.stage.qualname
        if self._codes.get(q, call.code) != call.code:
            self._bundles.pop(root, None)
        self._codes[q] = call.code
        async with self._bundle_lock:
            entry = self._bundles.get(root)
            if entry is None:
                bundle = await asyncio.to_thread(build_bundle, root)
                data = await self.client.scatter(bundle.data, hash=False)
                entry = self._bundles[root] = (bundle.digest, data)
                log.info(
                    "dask: code bundle %s of %s, %d files", bundle.digest[:12], root, bundle.files
                )
        return entry

    async def _deliver(self, batch: _Batch, results: list[WireResult]) -> None:
        """Write the outputs of calls still wanted to temps (in a thread), resolve each call."""
        by_key = {r.key: r for r in results}
        keyed = [
            (job, by_key.get(batch.key if len(batch.jobs) == 1 else f"{batch.key}-{i}"))
            for i, job in enumerate(batch.jobs)
        ]
        wanted = [(j, r) for j, r in keyed if r is not None and r.ok and not j.future.done()]
        written = await asyncio.to_thread(_write_all, wanted)
        for job, result in keyed:
            if result is None:
                continue
            self._paces.setdefault(job.call.stage.qualname, _Pace()).add(result.seconds)
            if result.ok:
                out = written.get(id(job))
                if isinstance(out, Written):
                    if job.future.done():  # timed out or cancelled meanwhile
                        out.discard()
                    else:
                        job.future.set_result(out)
                elif out is not None and not job.future.done():
                    job.future.set_exception(out)
            elif not job.future.done():
                error = error_of(result)
                if isinstance(error, CodeChanged):
                    self._bundles.pop(job.call.handler.root, None)  # the next call re-reads
                job.future.set_exception(error)

    # -- failures -----------------------------------------------------------------------------
    def _requeue(self, batch: _Batch, why: str) -> None:
        """Put a batch's unresolved calls back at the head of their queue, counting nothing."""
        jobs = [j for j in batch.jobs if not j.future.done()]
        if not jobs:
            return
        self.resubmitted += len(jobs)
        log.warning("dask: %s; %d call(s) sent again: %s", why, len(jobs), batch.key)
        for job in reversed(jobs):
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            job.batch = None
            self._waiting.setdefault(job.call.stage.qualname, deque()).appendleft(job)
        if why.startswith("the connection"):
            self._ready = False  # the watcher resumes once the client is back
            self._bundles.clear()  # scattered data did not survive

    def _worker_lost(self, batch: _Batch, exc: Exception) -> None:
        worker = getattr(getattr(exc, "last_worker", None), "address", "?")
        if len(batch.jobs) > 1:
            for job in batch.jobs:
                job.solo = True  # so the call that killed it fails alone next time
            self._requeue(batch, f"the Dask worker {worker} died running a batch")
            return
        job = batch.jobs[0]
        if not job.future.done():
            log.error("%s: the Dask worker %s running it died", job.call, worker)
            job.future.set_exception(
                WorkerLost(f"the Dask worker {worker} running the handler died")
            )

    def _fail_dask(self, batch: _Batch, exc: Exception) -> None:
        log.error("dask: task %s failed: %s: %s", batch.key, type(exc).__name__, exc)
        for job in batch.jobs:
            if not job.future.done():
                job.future.set_exception(HandlerError(f"Dask: {type(exc).__name__}: {exc}"))

    # -- timeouts and cancels -------------------------------------------------------------------
    def _on_started(self, event: tuple[float, Any]) -> None:
        """A worker started a task: the timeouts of its calls count from now."""
        key = str(event[1])
        batch = self._inflight.get(key)
        if batch is None:
            return
        batch.started = True
        loop = asyncio.get_running_loop()
        for job in batch.jobs:
            if job.call.timeout is not None and job.timer is None and not job.future.done():
                job.timer = loop.call_later(job.call.timeout, self._expire, job)

    def _expire(self, job: _Job) -> None:
        if not job.future.done():
            log.warning(
                "%s: over its %ss timeout; its result will be ignored (the Dask worker's "
                "thread runs the handler until it returns)",
                job.call,
                job.call.timeout,
            )
            job.future.set_exception(job.call.timed_out())

    def _resolved(self, job: _Job) -> None:
        """A call's future is done: once no call of its task is wanted, cancel the task."""
        if job.timer is not None:
            job.timer.cancel()
        batch = job.batch
        if self._closed or batch is None or batch.dask is None:
            return
        if all(j.future.done() for j in batch.jobs) and not batch.dask.done():
            task = asyncio.ensure_future(
                self.client.cancel([batch.dask], reason="eventrunner-gave-up", force=True)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- the cluster ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Follow the cluster's size, and come back after a lost scheduler connection."""
        while not self._closed:
            await asyncio.sleep(WATCH_S)
            status = self.client.status
            if status in ("closing", "closed"):
                await self._reconnect()
            elif status == "running":
                if not self._ready:
                    await self._resume()
                await self._refresh()

    async def _resume(self) -> None:
        try:
            await self.client.run_on_scheduler(_no_retries())
            self.client.subscribe_topic(self._topic, self._on_started)
        except Exception as exc:
            log.warning("dask: reconnected but could not set the scheduler up: %s", exc)
            return
        log.warning("dask: connection to the scheduler is back; sending calls again")
        self._ready = True
        self._kick()

    async def _reconnect(self) -> None:
        """The client gave up reconnecting: a new one, as soon as the scheduler answers."""
        self._ready = False
        address = str(self.cluster.scheduler_address if self.cluster else self.scheduler)
        try:
            client = await self._connect(address)
        except Exception as exc:
            log.error("dask: cannot reach the scheduler at %s (%s); retrying", address, exc)
            return
        old, self.client = self.client, client
        with contextlib.suppress(Exception):
            await old.close()
        self._bundles.clear()
        self._ready = True
        self._kick()

    async def _refresh(self) -> None:
        """Worker threads and resources from the scheduler; the engine hears of a change."""
        try:
            info = await self.client.scheduler.identity(n_workers=-1)
        except Exception:
            return  # not connected at the moment: the watcher tries again
        workers = info.get("workers", {}).values()
        slots = sum(int(w.get("nthreads", 0)) for w in workers)
        self._offered = {r for w in workers for r, n in (w.get("resources") or {}).items() if n}
        if slots != self._slots:
            before, self._slots = self._slots, slots
            if before:
                log.info("dask: worker threads %d -> %d", before, slots)
            self._capacity_changed()
            self._kick()

    def _warn_resources(self, call: Call) -> None:
        for name in call.stage.resources:
            if name not in self._offered and (call.stage.qualname, name) not in self._warned:
                self._warned.add((call.stage.qualname, name))
                log.warning(
                    "%s needs Dask resource %s, which no worker offers now: its calls wait "
                    "until a worker with it joins",
                    call.stage.qualname,
                    name,
                )


def _quiet_distributed() -> None:
    """distributed sets its loggers to INFO when imported; its per-task chatter is not ours to
    print unless eventrunner itself logs at DEBUG (-vv)."""
    if logging.getLogger("eventrunner").getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.WARNING)


def _no_retries() -> Any:
    """A function for run_on_scheduler that makes a worker lost mid-task err its task instead
    of rerunning it elsewhere, returning the setting it replaced. Nested, so it is pickled by
    value: the scheduler need not have eventrunner installed."""

    def set_allowed_failures(dask_scheduler: Any) -> int:
        before = int(dask_scheduler.allowed_failures)
        dask_scheduler.allowed_failures = 0
        return before

    return set_allowed_failures


def _write_all(pairs: list[tuple[_Job, WireResult]]) -> dict[int, Written | Exception]:
    """(In a thread.) Each result's outputs as temps under its call's data root."""
    out: dict[int, Written | Exception] = {}
    for job, result in pairs:
        try:
            out[id(job)] = write_outputs(result, job.call.root)
        except Exception as exc:
            out[id(job)] = exc
    return out


def _threadsafe(future: asyncio.Future[Written], exc: BaseException) -> None:
    """Fail a call's future from a thread."""

    def fail() -> None:
        if not future.done():
            future.set_exception(exc)

    future.get_loop().call_soon_threadsafe(fail)
