"""The Dask executor's connection: a client on the engine's loop, the local cluster behind it
when no scheduler is configured, and what the scheduler says about its workers.

It starts the local cluster (or finds the configured scheduler; `ExecutorUnavailable` naming
the setting when it cannot), tells the scheduler to rerun nothing (allowed-failures 0: the
engine counts attempts), subscribes to the workers' "task started" events, and then checks
every second how many worker threads and which resources the cluster has. When the client
loses the scheduler it waits for the client to reconnect (or makes a new client) and sets the
scheduler up again before the executor sends anything more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from eventrunner.core.errors import ExecutorUnavailable

log = logging.getLogger("eventrunner.executor")

WATCH_S = 1.0  # how often the cluster's workers and the connection are checked


def require_distributed() -> None:
    """ExecutorUnavailable (exit 2) when the distributed package is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ExecutorUnavailable(
            '[runtime] executor = "dask" needs the distributed package: '
            "pip install 'eventrunner[dask]'"
        ) from None


class DaskLink:
    """The client, the local cluster (if started here) and the cluster's size."""

    def __init__(
        self,
        *,
        scheduler: str | None,
        workers: int,
        topic: str,
        on_started: Callable[[tuple[float, Any]], None],
        on_change: Callable[[], None],
        on_back: Callable[[], None],
    ) -> None:
        """`on_started`: a worker's start event; `on_change`: the number of worker threads
        changed; `on_back`: the scheduler is reachable again after `lost()`."""
        require_distributed()
        self.scheduler = scheduler
        self.workers = max(1, workers)
        self.client: Any = None
        self.cluster: Any = None
        self.slots = 0  # worker threads in the cluster
        self.offered: set[str] = set()  # resources some worker has
        self.ready = False  # connected and set up: the executor may send
        self._topic = topic
        self._on_started = on_started
        self._on_change = on_change
        self._on_back = on_back
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def address(self) -> str:
        return str(self.cluster.scheduler_address if self.cluster else self.scheduler)

    async def start(self) -> None:
        """Start the local cluster (no `dask_scheduler`) and connect. Safe to call twice."""
        if self.client is not None:
            return
        _quiet_distributed()
        if self.scheduler is None:
            await self._start_cluster()
        try:
            self.client = await self._connect()
        except Exception as exc:
            await self._close_cluster()
            setting = (
                f"[runtime] dask_scheduler = {self.scheduler!r}"
                if self.scheduler
                else f"[runtime] dask_workers = {self.workers} (a local cluster)"
            )
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExecutorUnavailable(
                f"{setting}: cannot reach the Dask scheduler: {reason}"
            ) from None
        await self.refresh()
        self.ready = True
        self._watcher = asyncio.create_task(self._watch())
        log.info("dask: connected to %s (%d worker threads)", self.address, self.slots)

    async def _start_cluster(self) -> None:
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

    async def _connect(self) -> Any:
        """A client on this loop, subscribed to start events, on a scheduler set up."""
        from distributed import Client

        client = await Client(  # type: ignore[no-untyped-call]
            self.address, asynchronous=True, set_as_default=False
        )
        try:
            await self._set_up(client)
        except BaseException:
            await client.close()
            raise
        return client

    async def _set_up(self, client: Any) -> None:
        before = await client.run_on_scheduler(_no_retries())
        if before and self.cluster is None:
            log.warning(
                "dask: the scheduler at %s retried tasks on other workers "
                "(allowed-failures %s); set to 0, as eventrunner counts attempts itself",
                self.address,
                before,
            )
        client.subscribe_topic(self._topic, self._on_started)

    def lost(self) -> None:
        """The executor saw the connection go: send nothing until it is back."""
        self.ready = False

    async def close(self) -> None:
        """Disconnect and stop the local cluster. Idempotent."""
        self._closed = True
        self.ready = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            self._watcher = None
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        await self._close_cluster()

    async def _close_cluster(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            with contextlib.suppress(Exception):
                await cluster.close()

    async def _watch(self) -> None:
        """Follow the cluster's size, and come back after a lost scheduler connection."""
        while not self._closed:
            await asyncio.sleep(WATCH_S)
            status = self.client.status
            if status in ("closing", "closed"):
                await self._reconnect()
            elif status == "running":
                if not self.ready:
                    await self._resume()
                await self.refresh()

    async def _resume(self) -> None:
        """The client reconnected by itself: set the (maybe new) scheduler up again."""
        try:
            await self._set_up(self.client)
        except Exception as exc:
            log.warning("dask: reconnected but could not set the scheduler up: %s", exc)
            return
        log.warning("dask: connection to the scheduler is back; sending calls again")
        self.ready = True
        self._on_back()

    async def _reconnect(self) -> None:
        """The client gave up reconnecting: a new one, as soon as the scheduler answers."""
        self.ready = False
        try:
            client = await self._connect()
        except Exception as exc:
            log.error("dask: cannot reach the scheduler at %s (%s); retrying", self.address, exc)
            return
        old, self.client = self.client, client
        with contextlib.suppress(Exception):
            await old.close()
        self.ready = True
        self._on_back()

    async def refresh(self) -> None:
        """Worker threads and resources from the scheduler; `on_change` when the count moved."""
        try:
            info = await self.client.scheduler.identity(n_workers=-1)
        except Exception:
            return  # not connected at the moment: the watcher tries again
        workers = info.get("workers", {}).values()
        slots = sum(int(w.get("nthreads", 0)) for w in workers)
        self.offered = {r for w in workers for r, n in (w.get("resources") or {}).items() if n}
        if slots != self.slots:
            before, self.slots = self.slots, slots
            if before:
                log.info("dask: worker threads %d -> %d", before, slots)
            self._on_change()


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
