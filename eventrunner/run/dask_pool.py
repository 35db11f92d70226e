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
stage share a task (dask_batch); futures in flight stay at two per worker thread. The
connection and the cluster's size are dask_link's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import deque
from pathlib import Path
from typing import Any

from eventrunner.core.errors import CodeChanged, HandlerError, WorkerLost
from eventrunner.run.bundle import build_bundle
from eventrunner.run.dask_batch import (
    Batch,
    Job,
    Pace,
    batch_size,
    fail_threadsafe,
    warn_missing_resources,
)
from eventrunner.run.dask_link import DaskLink
from eventrunner.run.dask_task import run_batch
from eventrunner.run.dask_wire import (
    WireCall,
    WireResult,
    error_of,
    pack_inputs,
    wire_call,
    write_all,
)
from eventrunner.run.executors import Call, Executor
from eventrunner.run.invoke import Written
from eventrunner.run.tasks import cancel_all

log = logging.getLogger("eventrunner.executor")

PER_THREAD = 2  # futures in flight per worker thread: one runs, one waits its turn
LOST = "scheduler-connection-lost"


class DaskExecutor(Executor):
    """Runs calls on the Dask scheduler at `scheduler`, or on a local cluster of `workers`
    worker processes started here when there is none (see the module docstring)."""

    def __init__(self, *, scheduler: str | None, workers: int, shared_fs: bool) -> None:
        super().__init__()
        self.shared_fs = shared_fs
        self._token = secrets.token_hex(4)
        self._topic = f"eventrunner-started-{self._token}"
        self.link = DaskLink(
            scheduler=scheduler,
            workers=workers,
            topic=self._topic,
            on_started=self._on_started,
            on_change=self._link_changed,
            on_back=self._link_back,
        )
        self.batches = 0  # tasks submitted (a batch of one is a task too)
        self.resubmitted = 0  # calls sent again after a lost scheduler or a lost batch
        self._keys = itertools.count()
        self._seq = itertools.count()
        self._waiting: dict[str, deque[Job]] = {}
        self._inflight: dict[str, Batch] = {}
        self._paces: dict[str, Pace] = {}
        self._bundles: dict[Path, tuple[str, Any]] = {}
        self._bundle_lock = asyncio.Lock()
        self._codes: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: set[tuple[str, str]] = set()
        self._kicked = False

    @property
    def capacity(self) -> int:
        batch = max((p.batch() for p in self._paces.values()), default=1)
        return self._futures_limit * batch

    @property
    def _futures_limit(self) -> int:
        return max(1, PER_THREAD * self.link.slots)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the local cluster (no `dask_scheduler`) and connect; ExecutorUnavailable when
        the scheduler cannot be reached or the cluster does not start."""
        await self.link.start()

    def _link_changed(self) -> None:
        self._capacity_changed()
        self._kick()

    def _link_back(self) -> None:
        self._bundles.clear()  # scattered data did not survive the scheduler
        self._kick()

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

    async def _release(self) -> None:
        """Cancel queued and running calls, disconnect, stop the local cluster. Idempotent."""
        for dq in self._waiting.values():
            for job in dq:
                job.future.cancel()
        self._waiting.clear()
        for batch in list(self._inflight.values()):
            for job in batch.jobs:
                job.future.cancel()
        await cancel_all(self._tasks)
        await self.link.close()

    # -- calls --------------------------------------------------------------------------------
    def submit(self, call: Call) -> asyncio.Future[Written]:
        self._refuse_if_closed()
        job = Job(call, asyncio.get_running_loop().create_future(), next(self._seq))
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
        while self.link.ready and not self._closed and len(self._inflight) < self._futures_limit:
            q = self._best_stage()
            if q is None:
                return
            dq = self._waiting[q]
            free = self._futures_limit - len(self._inflight)
            size = 1 if dq[0].solo else batch_size(dq[0].call, self._paces, len(dq), free)
            jobs = [dq.popleft() for _ in range(min(size, len(dq)))]
            batch = Batch(f"eventrunner-{q}-{self._token}-{next(self._keys)}", jobs)
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

    async def _run(self, batch: Batch) -> None:
        """Pack, submit, await and deliver one task's calls."""
        try:
            results = await self._submit(batch)
            if results is not None:
                await self._deliver(batch, results)
        except asyncio.CancelledError:
            if not self._closed:
                raise
        except Exception as exc:
            if self.link.client is not None and self.link.client.status == "running":
                self._fail_dask(batch, exc)
            else:  # it failed because the scheduler went away: not the calls' fault
                self._requeue(batch, f"the connection to the scheduler was lost ({exc})")
        finally:
            self._inflight.pop(batch.key, None)
            if not self._closed:
                self._kick()

    async def _submit(self, batch: Batch) -> list[WireResult] | None:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        first = batch.jobs[0].call
        digest, bundle = await self._bundle(first)
        wires, blobs = await asyncio.to_thread(self._pack, batch, digest)
        live = [w for w in wires if w is not None]
        if not live:
            return None
        client = self.link.client
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
        warn_missing_resources(first, self.link.offered, self._warned)
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

    def _pack(self, batch: Batch, digest: str) -> tuple[list[WireCall | None], dict[str, bytes]]:
        """(In a thread.) Each live call's wire form; a call whose inputs cannot be read fails."""
        wires: list[WireCall | None] = []
        blobs: dict[str, bytes] = {}
        for i, job in enumerate(batch.jobs):
            c = job.call
            key = batch.key if len(batch.jobs) == 1 else f"{batch.key}-{i}"
            try:
                payload = pack_inputs(c, self.shared_fs, blobs, f"{key}:")
            except OSError as exc:
                wires.append(None)
                fail_threadsafe(job.future, exc)
                continue
            wires.append(
                None if job.future.done() else wire_call(c, key, digest, payload, self.shared_fs)
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
                data = await self.link.client.scatter(bundle.data, hash=False)
                entry = self._bundles[root] = (bundle.digest, data)
                log.info(
                    "dask: code bundle %s of %s, %d files", bundle.digest[:12], root, bundle.files
                )
        return entry

    async def _deliver(self, batch: Batch, results: list[WireResult]) -> None:
        """Write the outputs of calls still wanted to temps (in a thread), resolve each call."""
        by_key = {r.key: r for r in results}
        keyed = [
            (job, by_key.get(batch.key if len(batch.jobs) == 1 else f"{batch.key}-{i}"))
            for i, job in enumerate(batch.jobs)
        ]
        wanted = [(j, r) for j, r in keyed if r is not None and r.ok and not j.future.done()]
        written = await asyncio.to_thread(write_all, wanted)
        for job, result in keyed:
            if result is None:
                continue
            self._paces.setdefault(job.call.stage.qualname, Pace()).add(result.seconds)
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
    def _requeue(self, batch: Batch, why: str) -> None:
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
            self.link.lost()  # it resumes sending once the client is back
            self._bundles.clear()  # scattered data did not survive

    def _worker_lost(self, batch: Batch, exc: Exception) -> None:
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

    def _fail_dask(self, batch: Batch, exc: Exception) -> None:
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

    def _expire(self, job: Job) -> None:
        if not job.future.done():
            log.warning(
                "%s: over its %ss timeout; its result will be ignored (the Dask worker's "
                "thread runs the handler until it returns)",
                job.call,
                job.call.timeout,
            )
            job.future.set_exception(job.call.timed_out())

    def _resolved(self, job: Job) -> None:
        """A call's future is done: once no call of its task is wanted, cancel the task."""
        if job.timer is not None:
            job.timer.cancel()
        batch = job.batch
        if self._closed or batch is None or batch.dask is None:
            return
        if all(j.future.done() for j in batch.jobs) and not batch.dask.done():
            task = asyncio.ensure_future(
                self.link.client.cancel([batch.dask], reason="eventrunner-gave-up", force=True)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
