"""The long-running service: a live session (lock, index, engine) plus watcher and scheduler.

Start: take the lock, start watching, begin the stamp look (its stats in worker processes while
serve imports its server), start the session (the look's result, index load, crash sweep,
engine, catch up what changed while down), then the scheduler; ready. Every event is mapped to
the (stage, entity) pairs it affects; nothing on the event path scans the workspace.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventrunner.core.errors import ConfigError, StorageError
from eventrunner.core.reserved import reserved_reason
from eventrunner.run.engine import Engine
from eventrunner.run.events import Changed, Dead, EventBus, Ready, Reloaded, ReloadFailed
from eventrunner.run.planner import Target
from eventrunner.run.saves import save_in_thread
from eventrunner.run.session import Session
from eventrunner.run.tasks import cancel_all
from eventrunner.service.retries import RetryTimer, state_values, still_due
from eventrunner.service.watch import FileChange, Rescan, watch_changes
from eventrunner.service.watched import flat, is_code, watch_targets
from eventrunner.state.index import Index
from eventrunner.workspace import loader
from eventrunner.workspace.load import Workspace, load_workspace
from eventrunner.workspace.settings import Settings

log = logging.getLogger("eventrunner.runtime")


class Runtime:
    """Owns a workspace while serving. Use as `async with Runtime(ws) as rt: ...`."""

    def __init__(
        self, ws: Workspace, *, watch: bool = True, stop_event: asyncio.Event | None = None
    ) -> None:
        self.events = EventBus()  # the engine's events and the runtime's (SSE, metrics, ...)
        self.session = Session(ws, "serve", live=True, events=self.events)
        self.settings: Settings = ws.settings
        self.store = self.session.store
        self.watch_enabled = watch
        self.stop_event = stop_event or asyncio.Event()
        self.ready = asyncio.Event()
        self.started_at = time.time()
        self.last_reload_error: str | None = None
        self.last_reconcile: float | None = None  # when a whole comparison last finished
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._watched: tuple[list[Path], list[Path]] = ([], [])
        self._scheduler: Any = None
        self.alerts: Any = None  # an Alerter (service/alerts.py) while [alert] is configured
        self._closed = False
        self._prepared = False
        self._reload_lock = asyncio.Lock()
        self._engine_started = asyncio.Event()  # the watch loop holds its batches until then
        # Each failed state's retry at its own time (the sweep is the safety net): issue 10.4.
        self.retries = RetryTimer(self._retry_due)
        self.events.subscribe(self.retries.on_event)

    # What the session holds (a reload replaces the index and the engine).
    @property
    def ws(self) -> Workspace:
        return self.session.ws

    @property
    def index(self) -> Index | None:
        return self.session.index

    @property
    def engine(self) -> Engine | None:
        return self.session.engine

    @property
    def start_mode(self) -> str:
        """The start mode: "incremental" (from a stamp) or "full", once started."""
        return self.session.mode

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        """Take the workspace lock (LockHeld names the holder); `start()` does the rest."""
        self.session.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def prepare(self) -> None:
        """The first half of `start()`: alerts checked, watchers live, the stamp look begun.
        serve calls it before importing its server, so that the look's stats (worker
        processes) and those imports overlap; once only."""
        if self._prepared:
            return
        self._prepared = True
        from eventrunner.service.alerts import start_alerts

        # First: an unset URL variable is a start-up error, before anything is watched or run.
        self.alerts = await start_alerts(self.settings.alert, self.events, self.ws.root.name)
        if self.watch_enabled:
            # watchfiles cannot watch a folder that does not exist (it retried for 30 s, then
            # serve died: issue 14.13); an empty data root is a valid start.
            self._make_data_root()
            # Live before the session's index load scans the sources, so a change in between
            # is not missed (and the start-up reconcile need not scan a second time).
            await self._start_watchers()
        # The stamp look begins once the watcher is live, so nothing slips between the two.
        self.session.begin_look()

    async def start(self) -> None:
        """Prepare (if not yet), then the session (the look's result, index load, sweep,
        engine, catch-up), then the scheduler; then ready."""
        await self.prepare()
        # APScheduler's import (0.1 s) while the look's workers run, not after them.
        from eventrunner.service import schedule  # noqa: F401

        # The index loads while the look's workers take the stats (other processes: threads
        # contended for the GIL and were slower together, 2.3 s vs 1.9 s at 100,000 entities).
        await self.session.start()
        self._tell_recovered_dead()
        self._engine_started.set()
        self._arm_retries()  # the schedule kept on disk survives a restart
        assert self.engine is not None
        if self.engine.blocked_seen == 0:
            self.session.vouch()  # unless something a stamp cannot vouch for happens meanwhile
        self.last_reconcile = time.time()
        await self._start_scheduler()
        self._tasks.append(asyncio.create_task(self._persist_loop()))
        self.ready.set()
        self.events.emit(Ready())
        # The start-up reconcile's own count: queue_depth here would miss what already started.
        log.info("ready: %d stages, %d queued", len(self.ws.graph.stages), self.session.caught_up)

    def _tell_recovered_dead(self) -> None:
        """States the crash sweep found dead (a handler that ended the process on its last
        attempt) get their `dead` event, and so an alert, like a state that died running."""
        recovered, index = self.session.recovered, self.session.index
        if recovered is None or index is None:
            return
        for q, eid in recovered.died:
            f = index.failures[q].get(eid)
            if f is not None and f.dead:
                self.events.emit(Dead(stage=q, entity=eid, attempts=f.attempts, error=f.error))

    def _make_data_root(self) -> None:
        root = self.settings.data_root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the data root {root}: {exc}") from exc

    async def _start_scheduler(self) -> None:
        from eventrunner.service.schedule import Scheduler

        rt = self.settings.runtime
        sched = Scheduler()
        sched.add_interval("retry-sweep", rt.retry_sweep_interval, self._sweep)
        sched.add_interval("reconcile", rt.reconcile_interval, self._reconcile_job)
        self._add_crons(sched)
        self._scheduler = await sched.__aenter__()

    def _add_crons(self, sched: Any) -> None:
        for q, stage in self.ws.graph.stages.items():
            if stage.schedule:
                sched.add_cron(f"cron:{q}", stage.schedule, self._cron_job(q))

    async def close(self) -> None:
        """Stop intake, then the session: running handlers finish within the grace period, the
        index is saved, the stamp written when provable, the lock released. Once: a second call
        (serve's own, then the context manager's) found the engine already stopped, took that
        for a clean stop and wrote a stamp over abandoned work."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        self.retries.close()
        if self._scheduler is not None:
            await self._scheduler.close()
            self._scheduler = None
        await self._stop_watchers()
        await cancel_all(self._tasks)
        self._tasks.clear()
        await self.session.close()
        if self.alerts is not None:
            await self.alerts.close()

    # -- events ------------------------------------------------------------------------------------
    def on_change(self, change: FileChange) -> int:
        """One file changed under the data root: queue what it affects; returns how many were queued."""
        assert self.engine is not None
        seen = time.time()
        # The `changed` event goes first, then the `queued` events it caused (issue 10.13).
        with self.events.holding() as held:
            queued, source_hit = self.engine.report_change(change.kind, change.relpath)
            if queued or source_hit:
                held.lead(
                    Changed(path=change.relpath, change=change.kind, queued=queued, time=seen)
                )
        return queued

    async def reconcile_async(self) -> int:
        """Full comparison of the workspace with the index while serving (timer, lost events):
        the evaluation yields to intake and events every few hundred states."""
        assert self.engine is not None
        removed = await self.rescan()
        targets = itertools.chain(removed, self.engine.targets())
        n = await self.engine.consider_async(targets, warm=True)
        log.info("reconcile queued %d state(s)", n)
        self.last_reconcile = time.time()
        return n

    @property
    def watching(self) -> bool:
        """True while every file watcher is running (False with --no-watch)."""
        return bool(self._watchers) and not any(t.done() for t in self._watchers)

    def unstamp(self) -> None:
        """State changed in a way a stamp cannot vouch for: the next start evaluates fully."""
        self.session.unstamp()

    async def rescan(self) -> list[Target]:
        """Scan the sources again and apply what differs from the index (see Session.rescan)."""
        return await self.session.rescan()

    async def _reconcile_job(self) -> None:
        await self.reconcile_async()

    async def _sweep(self) -> None:
        """Re-queue failures whose backoff expired (O(failures), never a workspace scan): the
        safety net under the retry timer."""
        assert self.engine is not None and self.index is not None
        now = time.time()
        targets: list[Target] = []
        for q, fails in self.index.failures.items():
            for eid, f in fails.items():
                if not f.dead and f.next_retry is not None and f.next_retry <= now:
                    values = self._values(q, eid)
                    if values is not None:
                        targets.append((q, eid, values))
        if targets:
            self.engine.consider(targets)

    def _values(self, q: str, eid: str) -> dict[str, str] | None:
        assert self.index is not None
        return state_values(self.index, q, eid)

    def _arm_retries(self) -> None:
        assert self.index is not None
        self.retries.arm_from(self.index)

    def _retry_due(self, due: list[tuple[str, str, float]]) -> None:
        """The retry timer's call: queue what is still due (see retries.still_due)."""
        if self.engine is None or self.index is None or self._closed:
            return
        if targets := still_due(self.index, due):
            self.engine.consider(targets)

    def _cron_job(self, qualname: str) -> Callable[[], Any]:
        async def fire() -> None:
            assert self.engine is not None and self.index is not None
            stage = self.ws.graph.stages[qualname]
            if not stage.inputs:  # a generator: its clock is its input
                control = self.index.control.copy()
                control.invalidations.setdefault(qualname, {})["*"] = time.time_ns()
                self.index.set_control(control)
            self.engine.consider([(qualname, e, v) for e, v in self.index.stage_entities(qualname)])

        return fire

    async def _persist_loop(self) -> None:
        """Save the index cache now and then, so a restart after a clean stop reads one file."""
        while True:
            await asyncio.sleep(30)
            if self.index is not None and self.index.changed:
                try:
                    # A snapshot pickled in a thread: events go on being handled meanwhile.
                    await save_in_thread(self.index)
                except OSError as exc:
                    log.error("could not save the index cache (will retry): %s", exc)

    # -- watching ----------------------------------------------------------------------------------
    async def _start_watchers(self) -> None:
        """Start the data (and code) watchers and wait until they are live."""
        data_paths, code_paths = watch_targets(self.ws)
        self._watched = (data_paths, code_paths)
        live: list[tuple[asyncio.Event, list[Path]]] = []
        for root, paths in (
            (self.settings.data_root, data_paths),
            (self.settings.workspace, code_paths),
        ):
            if paths:
                ready = asyncio.Event()
                self._watchers.append(asyncio.create_task(self._watch_loop(root, paths, ready)))
                live.append((ready, paths))
        for ready, paths in live:
            try:
                await asyncio.wait_for(ready.wait(), 30)
            except TimeoutError:
                where = ", ".join(map(str, paths))
                raise StorageError(f"the file watcher on {where} did not start in 30 s") from None

    async def _stop_watchers(self) -> None:
        await cancel_all(self._watchers)
        self._watchers.clear()

    async def _watch_loop(self, root: Path, paths: list[Path], watching: asyncio.Event) -> None:
        rt = self.settings.runtime
        workspace = self.settings.workspace
        code_only = root == workspace and root != self.settings.data_root
        async for batch in watch_changes(
            root,
            stop_event=self.stop_event,
            debounce=rt.debounce,
            settle=rt.settle,
            ready=watching,
            paths=paths,
            recursive=code_only or not flat(self.ws, paths),
        ):
            await self._engine_started.wait()
            if isinstance(batch, Rescan):
                log.warning("watcher lost events (%s): reconciling", batch.reason)
                await self.reconcile_async()
                continue
            code_changed = False
            reserved = self.ws.reserved
            for change in batch:
                abs_path = root / change.relpath
                if is_code(abs_path, workspace):
                    code_changed = True
                    continue
                # The workspace's code and state are never source data (issue 14.1).
                if not code_only and reserved_reason(change.relpath, reserved) is None:
                    self.on_change(change)
            if code_changed:
                await self.reload()
        # watch_changes returns when stop_event is set.

    async def reload(self) -> bool:
        """Re-load pipelines and handlers; keep the running version when the edit is invalid."""
        async with self._reload_lock:
            self.unstamp()  # definitions changed under us: the next start evaluates fully
            try:
                loader.forget(self.settings.handlers_dir)
                from eventrunner.workspace import codeid

                codeid.clear_cache()
                new_ws = await asyncio.to_thread(load_workspace, self.settings.workspace)
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                log.error("reload refused, keeping the running version:\n%s", exc)
                self.events.emit(ReloadFailed(problems=[str(p) for p in exc.problems]))
                return False
            changed = sorted(
                q
                for q in new_ws.code
                if self.ws.code.get(q) != new_ws.code[q]
                or self.ws.params.get(q) != new_ws.params.get(q)
            )
            await self.session.reload(new_ws)
            assert self.engine is not None
            self._arm_retries()
            if self._scheduler is not None:
                for job in self._scheduler.job_ids():
                    if job.startswith("cron:"):
                        self._scheduler.remove(job)
                self._add_crons(self._scheduler)
            self.last_reload_error = None
            self.events.emit(Reloaded(changed_stages=changed))
            log.info("reloaded; stages with new code or params: %s", ", ".join(changed) or "none")
            self.engine.consider(self.engine.targets(), fresh_pass=True)
            if self.watch_enabled and watch_targets(self.ws) != self._watched:
                # New source folders: re-aim the watchers (from a task of its own, since this
                # reload may be running inside one of them).
                self._tasks.append(asyncio.create_task(self._restart_watchers()))
            return True

    async def _restart_watchers(self) -> None:
        await self._stop_watchers()
        await self._start_watchers()
        await self.reconcile_async()  # whatever changed while no watcher was live
