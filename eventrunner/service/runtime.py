"""The long-running service: lock, index, engine, watcher, scheduler; events in, work out.

Start: take the lock, load the index, start the engine, start watching, reconcile (catch what
changed while down), then ready. Every event is mapped to the (stage, entity) pairs it affects;
nothing on the event path scans the workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventrunner.core.errors import ConfigError
from eventrunner.core.patterns import scan
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.run.engine import Engine
from eventrunner.run.planner import Target
from eventrunner.service.watch import FileChange, Rescan, watch_changes
from eventrunner.state import fastpath
from eventrunner.state import stamp as stamping
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace import loader
from eventrunner.workspace.load import Workspace, load_workspace
from eventrunner.workspace.settings import Settings

log = logging.getLogger("eventrunner.runtime")

EventSink = Callable[[dict[str, Any]], None]


class Runtime:
    """Owns a workspace while serving. Use as `async with Runtime(ws) as rt: ...`."""

    def __init__(
        self, ws: Workspace, *, watch: bool = True, stop_event: asyncio.Event | None = None
    ) -> None:
        self.ws = ws
        self.settings: Settings = ws.settings
        self.store = Store(ws.settings.state_dir)
        self.watch_enabled = watch
        self.stop_event = stop_event or asyncio.Event()
        self.ready = asyncio.Event()
        self.index: Index | None = None
        self.engine: Engine | None = None
        self.sinks: list[EventSink] = []
        self.started_at = time.time()
        self.last_reload_error: str | None = None
        self.last_reconcile: float | None = None  # when a whole comparison last finished
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._watched: tuple[list[Path], list[Path]] = ([], [])
        self._scheduler: Any = None
        self._locked = False
        self._reload_lock = asyncio.Lock()
        self.start_mode = ""  # "incremental" (from a stamp) or "full"
        self._stamp_ok = False  # cleared by anything a stamp could not vouch for
        self._look_changed: list[str] = []  # what changed while down (its stats are read again)
        self._engine_started = asyncio.Event()  # the watch loop holds its batches until then

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        """Take the workspace lock (LockHeld names the holder); `start()` does the rest."""
        self.store.acquire_lock("serve")
        self._locked = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start watching, load the index, start the engine, reconcile, schedule; then ready."""
        if self.watch_enabled:
            # Live before Index.load scans the sources, so a change in between is not missed
            # (and the start-up reconcile need not scan a second time).
            await self._start_watchers()
        # What changed since a stamp (run's or a previous serve's), compared once the watcher is
        # live so nothing slips between the two. One after the other, not in two threads: both
        # are mostly Python work, and contending for the GIL made them slower together (2.3 s vs
        # 1.9 s at 100,000 entities) and fragmented the heap more.
        look = await asyncio.to_thread(fastpath.look, self.settings.state_dir)
        # Nothing came or went in a stamped folder since: the stamp's sources are today's.
        trusted = (
            look.source_ids() if look and look.incremental and not look.files_came_or_went else None
        )
        index = await asyncio.to_thread(Index.load, self.ws, self.store, trusted)
        self.index = index
        if self.store.crashed_before or index.recovered:
            swept = await asyncio.to_thread(index.sweep_temps)
            log.info("previous holder did not stop cleanly; removed %d temp file(s)", swept)
        self.engine = self._new_engine(index)
        await self.engine.start()
        self._engine_started.set()
        # State may change from here on: the stamp goes out of use (kept aside when its paths
        # are to be carried into the stamp written at a clean stop).
        if look is not None and look.incremental:
            fastpath.set_aside(self.settings.state_dir)
            # Everything was fresh at the stamp: follow only what changed while we were down.
            targets = stamping.targets_since(self.engine, self.index, self.ws, look)
            caught_up = self.engine.consider(targets, fresh_pass=True)
            self.start_mode, self._look_changed = "incremental", look.changed
        else:
            fastpath.discard(self.settings.state_dir)
            caught_up = self.check_everything()
            self.start_mode = "full"
        del look  # its packed paths: 10s of MB at 100,000 entities
        self._stamp_ok = self.engine.blocked_seen == 0
        self.last_reconcile = time.time()
        await self._start_scheduler()
        self._tasks.append(asyncio.create_task(self._persist_loop()))
        self.ready.set()
        self.emit({"kind": "ready"})
        # The start-up reconcile's own count: queue_depth here would miss what already started.
        log.info("ready: %d stages, %d queued", len(self.ws.graph.stages), caught_up)

    def _write_stamp(self) -> bool:
        """At a clean stop, vouch for the state when it is provably accounted for: nothing failed,
        dead or held, and a fresh scan of the sources agrees with the index (no file arrived
        that the watcher had not delivered yet)."""
        idx = self.index
        assert idx is not None
        if any(idx.failures.values()) or idx.control.holds:
            return False
        dirs_before = stamping.dir_snapshot(self.ws)
        on_disk = {
            rel
            for key, src in self.ws.graph.sources.items()
            for rel, _ in scan(src.pattern, self.settings.data_root)
        }
        if on_disk != idx.source_paths():
            return False
        carried: dict[str, tuple[int, int, int]] | None = None
        if self.start_mode == "incremental":
            # What the stamp we started from vouched for is vouched for again (see write_stamp).
            carried = fastpath.previous(self.settings.state_dir)
            if carried is None:
                return False
        stamping.write_stamp(
            self.ws, idx, 0, carried=carried, dirs_before=dirs_before, changed=self._look_changed
        )
        return (self.settings.state_dir / fastpath.STAMP).exists()

    def _new_engine(self, index: Index) -> Engine:
        return Engine(
            index,
            self.store,
            jobs=self.settings.runtime.concurrency,
            listener=self.emit,
            retry_in_run=True,
        )

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
        """Stop intake, let running handlers finish within the grace period, persist, unlock."""
        self.stop_event.set()
        if self._scheduler is not None:
            await self._scheduler.close()
            self._scheduler = None
        await self._stop_watchers()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.engine is not None:
            await self.engine.stop(self.settings.runtime.shutdown_grace)
        if self.index is not None and (self.index.changed or self.index.dirty_path.exists()):
            await self.index.save_async()
        if (
            self._stamp_ok
            and self.engine is not None
            and self.engine.stopped_clean
            and self.index is not None
        ):
            wrote = await asyncio.to_thread(self._write_stamp)
            log.info(
                "stamp %s",
                "written: the next start or run needs only stats" if wrote else "not written",
            )
        (self.settings.state_dir / fastpath.PREVIOUS).unlink(missing_ok=True)
        if self._locked:
            self.store.release_lock()
            self._locked = False

    # -- events ------------------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        """Fan an event out to subscribers (SSE, metrics)."""
        event.setdefault("time", time.time())
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception:
                log.exception("event sink failed")

    def on_change(self, change: FileChange) -> int:
        """One file changed under the data root: queue what it affects; returns how many were queued."""
        assert self.engine is not None and self.index is not None
        targets, source_hit = self.engine.planner.targets_for_change(change.kind, change.relpath)
        queued = self.engine.consider(targets) if targets else 0
        if queued or source_hit:
            self.emit(
                {"kind": "changed", "path": change.relpath, "change": change.kind, "queued": queued}
            )
        return queued

    def check_everything(self) -> int:
        """Every state checked in one go: start-up without a stamp, before ready (Index.load
        has just scanned the sources, after the watcher went live)."""
        assert self.engine is not None
        n = self.engine.consider(self.engine.planner.all_targets())
        # Drop the pass's memo now (a verdict per state), not during the next event's handling.
        self.engine.evaluator.reset()
        return n

    async def reconcile_async(self) -> int:
        """Full comparison of the workspace with the index while serving (timer, lost events):
        the evaluation yields to intake and events every few hundred states."""
        assert self.engine is not None
        removed = await self.rescan()
        planner = self.engine.planner
        n = await self.engine.consider_async(itertools.chain(removed, planner.iter_targets()))
        log.info("reconcile queued %d state(s)", n)
        self.last_reconcile = time.time()
        return n

    @property
    def watching(self) -> bool:
        """True while every file watcher is running (False with --no-watch)."""
        return bool(self._watchers) and not any(t.done() for t in self._watchers)

    def unstamp(self) -> None:
        """State changed in a way a stamp cannot vouch for: the next start evaluates fully."""
        self._stamp_ok = False

    async def rescan(self) -> list[Target]:
        """Scan the sources again and apply what differs from the index; targets of what vanished.

        The scan (O(sources)) runs in a thread; only the difference is applied on the loop, each
        candidate checked on disk again, since events keep changing the index meanwhile."""
        assert self.engine is not None and self.index is not None
        idx, planner, root = self.index, self.engine.planner, self.settings.data_root
        sources = {key: src.pattern for key, src in self.ws.graph.sources.items()}

        def scan_all() -> dict[str, dict[str, dict[str, str]]]:
            return {
                key: {entity_id(p.variables, values): values for _, values in scan(p, root)}
                for key, p in sources.items()
            }

        found = await asyncio.to_thread(scan_all)
        targets: list[Target] = []
        for key, now in found.items():
            inst = idx.instances[key]
            for eid in inst.items.keys() - now.keys():
                relpath = inst.path(eid)
                if not os.path.lexists(root / relpath):
                    values = inst.values(eid)
                    idx.discard_instance(key, values)
                    idx.forget_file(relpath)
                    targets.extend(planner.removed_targets(key, values))
                    self.emit(
                        {"kind": "changed", "path": relpath, "change": "deleted", "by": "rescan"}
                    )
            for eid in now.keys() - inst.items.keys():
                relpath = inst.pattern.join(now[eid])
                if os.path.lexists(root / relpath):
                    idx.add_instance(key, now[eid])  # its targets: every run of a pass has them
                    self.emit(
                        {"kind": "changed", "path": relpath, "change": "added", "by": "rescan"}
                    )
        return targets

    async def _reconcile_job(self) -> None:
        await self.reconcile_async()

    async def _sweep(self) -> None:
        """Re-queue failures whose backoff expired (O(failures), never a workspace scan)."""
        assert self.engine is not None and self.index is not None
        now = time.time()
        targets: list[Target] = []
        for q, fails in self.index.failures.items():
            for eid, f in fails.items():
                if not f.dead and f.next_retry is not None and f.next_retry <= now:
                    m = self.index.manifests[q].get(eid)
                    values = m.values if m else self.index.values_or_none(q, eid)
                    if values is not None:
                        targets.append((q, eid, values))
        if targets:
            self.engine.consider(targets)

    def _cron_job(self, qualname: str) -> Callable[[], Any]:
        async def fire() -> None:
            assert self.engine is not None and self.index is not None
            stage = self.ws.graph.stages[qualname]
            if not stage.inputs:  # a generator: its clock is its input
                self.index.mark_dirty()
                self.index.control.invalidations.setdefault(qualname, {})["*"] = time.time_ns()
                self.store.write_control(self.index.control)
            self.engine.consider([(qualname, e, v) for e, v in self.index.stage_entities(qualname)])

        return fire

    async def _persist_loop(self) -> None:
        """Save the index cache now and then, so a restart after a clean stop reads one file."""
        while True:
            await asyncio.sleep(30)
            if self.index is not None and self.index.changed:
                try:
                    # A snapshot pickled in a thread: events go on being handled meanwhile.
                    await self.index.save_async()
                except OSError as exc:
                    log.error("could not save the index cache (will retry): %s", exc)

    # -- watching ----------------------------------------------------------------------------------
    def _watch_targets(self) -> tuple[list[Path], list[Path]]:
        """(data paths, code paths) to watch. Data: the source folders only — outputs are ours,
        and watching them would cost a walk of every output at start and an echo per write (an
        output edited by hand is caught by the periodic reconcile and by `run`). Code: handlers/,
        pipelines/ and eventrunner.toml, unless the data watch already covers the workspace."""
        data, ws = self.settings.data_root, self.settings.workspace
        prefixes = sorted({src.pattern.static_prefix for src in self.ws.graph.sources.values()})
        tops = [p for p in prefixes if not any(p.startswith(q + "/") for q in prefixes if q != p)]
        if not tops or "" in tops or not all((data / p).is_dir() for p in tops):
            data_paths = [data]  # a source at the root, or a drop folder not created yet
        else:
            data_paths = [data / p for p in tops]
        if data in data_paths and ws == data:
            return data_paths, []
        code = [
            p for p in (ws / "handlers", ws / "pipelines", ws / "eventrunner.toml") if p.exists()
        ]
        return data_paths, code

    async def _start_watchers(self) -> None:
        """Start the data (and code) watchers and wait until they are live."""
        data_paths, code_paths = self._watch_targets()
        self._watched = (data_paths, code_paths)
        live = []
        for root, paths in (
            (self.settings.data_root, data_paths),
            (self.settings.workspace, code_paths),
        ):
            if paths:
                ready = asyncio.Event()
                self._watchers.append(asyncio.create_task(self._watch_loop(root, paths, ready)))
                live.append(ready)
        for ready in live:
            await asyncio.wait_for(ready.wait(), 30)

    async def _stop_watchers(self) -> None:
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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
        ):
            await self._engine_started.wait()
            if isinstance(batch, Rescan):
                log.warning("watcher lost events (%s): reconciling", batch.reason)
                await self.reconcile_async()
                continue
            code_changed = False
            for change in batch:
                abs_path = root / change.relpath
                if _is_code(abs_path, workspace):
                    code_changed = True
                    continue
                if not code_only:
                    self.on_change(change)
            if code_changed:
                await self.reload()
        # watch_changes returns when stop_event is set.

    async def reload(self) -> bool:
        """Re-load pipelines and handlers; keep the running version when the edit is invalid."""
        async with self._reload_lock:
            self._stamp_ok = False  # definitions changed under us: the next start evaluates fully
            try:
                loader.forget(self.settings.handlers_dir)
                from eventrunner.workspace import codeid

                codeid.clear_cache()
                new_ws = await asyncio.to_thread(load_workspace, self.settings.workspace)
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                log.error("reload refused, keeping the running version:\n%s", exc)
                self.emit({"kind": "reload_failed", "problems": [str(p) for p in exc.problems]})
                return False
            changed = sorted(
                q
                for q in new_ws.code
                if self.ws.code.get(q) != new_ws.code[q]
                or self.ws.params.get(q) != new_ws.params.get(q)
            )
            assert self.engine is not None and self.index is not None
            await self.engine.stop(self.settings.runtime.shutdown_grace)
            await self.index.save_async()
            self.ws = new_ws
            self.index = await asyncio.to_thread(Index.load, new_ws, self.store)
            self.engine = self._new_engine(self.index)
            await self.engine.start()
            if self._scheduler is not None:
                for job in self._scheduler.job_ids():
                    if job.startswith("cron:"):
                        self._scheduler.remove(job)
                self._add_crons(self._scheduler)
            self.last_reload_error = None
            self.emit({"kind": "reloaded", "changed_stages": changed})
            log.info("reloaded; stages with new code or params: %s", ", ".join(changed) or "none")
            self.engine.consider(self.engine.planner.all_targets(), fresh_pass=True)
            if self.watch_enabled and self._watch_targets() != self._watched:
                # New source folders: re-aim the watchers (from a task of its own, since this
                # reload may be running inside one of them).
                self._tasks.append(asyncio.create_task(self._restart_watchers()))
            return True

    async def _restart_watchers(self) -> None:
        await self._stop_watchers()
        await self._start_watchers()
        await self.reconcile_async()  # whatever changed while no watcher was live


def _is_code(path: Path, workspace: Path) -> bool:
    """Pipeline files, handler modules and eventrunner.toml trigger a reload, not work."""
    try:
        rel = path.relative_to(workspace)
    except ValueError:
        return False
    parts = rel.parts
    if parts == ("eventrunner.toml",):
        return True
    if parts and parts[0] == "pipelines" and rel.suffix in (".toml", ".json"):
        return True
    return bool(parts) and parts[0] == "handlers" and rel.suffix == ".py"
