"""One lifecycle for whoever holds a workspace: `run`, `serve`, and the CLI's management calls.

    start:  lock -> stamp look -> index load -> crash sweep -> engine -> catch up or check all
    close:  engine stop -> index save -> stamp -> unlock

Shaped as starlette's lifespan, one async context manager whose start and stop failures are
told apart: a failed start is kept as `start_error`, releases what it took (the lock too) and
is raised; each failed stop step is kept in `stop_errors`. `close()` is ordered and idempotent
like arq's: safe to call twice, a failed step skips only the steps that depend on it (no save
after a failed engine stop, no stamp after a failed save), the lock is always released, and a
cancellation is re-raised once it is. A cache (index, stamp) a full disk refuses is a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from eventrunner.core.errors import UnknownName, is_environmental
from eventrunner.run import noops
from eventrunner.run.engine import Engine
from eventrunner.run.events import EventBus, Listener
from eventrunner.run.planner import Target
from eventrunner.run.rescan import rescan
from eventrunner.run.saves import save_in_thread
from eventrunner.state import fastpath, recovery
from eventrunner.state import stamp as stamping
from eventrunner.state.index import Index
from eventrunner.state.lookahead import PendingLook
from eventrunner.state.scan import scan
from eventrunner.state.sourcediff import SourceDiff, sources_now
from eventrunner.state.store import Store

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

log = logging.getLogger("eventrunner.session")

T = TypeVar("T")
_UNSET: Any = object()


class Session:
    """A workspace held from lock to unlock: `async with Session(ws, "run") as s: ...`.

    check: build an engine and catch up (False: management calls, state only). live: serve,
    whose events keep the index up (slow steps run in threads; the stamp is checked against a
    fresh scan at close). read_only: a dry run, no lock and nothing written. stages/entity:
    a selection (only a whole-workspace session starts from the stamp or writes one)."""

    def __init__(
        self,
        ws: Workspace,
        purpose: str,
        *,
        check: bool = True,
        live: bool = False,
        read_only: bool = False,
        stages: list[str] | None = None,
        entity: str | None = None,
        jobs: int | None = None,
        listener: Listener | None = None,
        events: EventBus | None = None,
        look: fastpath.Look | PendingLook | None = _UNSET,
    ) -> None:
        self.ws = ws
        self.purpose = purpose  # named by LockHeld to whoever else wants the workspace
        self.store = Store(ws.settings.state_dir)
        self.check, self.live, self.read_only = check, live, read_only
        self.stages, self.entity = stages, entity
        self.whole = stages is None and entity is None
        self.jobs = jobs or ws.settings.runtime.concurrency
        # One bus for the session's engines and its own events (serve shares the runtime's).
        self.events = events if events is not None else EventBus()
        self.recovered: recovery.Recovered | None = None  # what the crash sweep found
        if listener is not None:
            self.events.subscribe(listener)
        self.index: Index | None = None
        self.engine: Engine | None = None
        self.mode = ""  # once started with an engine: "incremental" (from a stamp) or "full"
        self.initial: list[Target] = []  # what the catch-up checked (not kept by live sessions)
        self.caught_up = 0  # states the catch-up queued
        self.start_error: BaseException | None = None
        self.stop_errors: list[tuple[str, BaseException]] = []
        self.stop_warnings: list[str] = []  # cache steps that could not write (see _step)
        self._given_look = look
        self.follows: fastpath.Look | None = None  # the stamp a one-shot run follows
        self._changed: list[str] = []  # what changed while down (its stats are read again)
        self._dirs_before: dict[str, tuple[int, int, int]] | None = None
        self._same_sources = False  # the index holds the stamp's sources (the stamp reuses them)
        self._source_diff: SourceDiff | None = None  # the sources that came and went since it
        self._vouch: int | None = None  # skipped count to stamp with; None: no stamp
        self._recorded: dict[str, Any] = {}  # more of the result the stamp records (vouch)
        self._locked = self._started = self._closed = False

    # -- start -----------------------------------------------------------------------------------
    async def __aenter__(self) -> Session:
        await self.start()
        return self

    def begin_look(self) -> None:
        """Start the stamp look's stats now, in worker processes (serve, its watchers live,
        imports the server meanwhile); start() takes the result, a failed start stops them."""
        if self._given_look is _UNSET and self.whole and self.check and not self.read_only:
            self._given_look = PendingLook(self.ws.settings.state_dir)

    def lock(self) -> None:
        """Take the one-writer lock (LockHeld names the holder); idempotent, none if read-only."""
        if not self.read_only and not self._locked:
            self.store.acquire_lock(self.purpose)
            self._locked = True

    async def start(self) -> None:
        """Lock, look at the stamp, load the index, sweep a crash's debris, start the engine and
        catch up. On failure: recorded in start_error, all taken released, raised."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("a closed session cannot start again")
        try:
            self.lock()
            look = await self._load()
            if self.check:
                await self._start_engine(look)
        except BaseException as exc:
            self.start_error = exc
            log.info("%s: start failed: %s", self.purpose, exc)
            self._closed = True
            await self._release(aborted=True)
            raise
        self._started = True

    async def _load(self) -> fastpath.Look | None:
        """The index, its sources told by the stamp when it can (sources_now); the look when
        this session follows only what changed since the stamp."""
        early = await self._early_index()
        try:
            look = await self._take_look()
        except BaseException:
            if early is not None:
                early.db.close()
            raise
        follow = look if look is not None and look.incremental else None
        trusted, self._source_diff = sources_now(self.ws, follow)
        if self.check and self.whole and not self.live and not self.read_only:
            # Before the scan: a file arriving during it changes a folder, and the stamp refuses.
            self._dirs_before = stamping.dir_snapshot(self.ws)
        if early is not None and (trusted is None or self._source_diff is not None):
            early.db.close()  # loaded with the stamp's sources, and those are not today's
            early = None
        self.index = (
            early
            if early is not None
            else await self._call(Index.load, self.ws, self.store, trusted)
        )
        self._same_sources = trusted is not None and not self.live and not self._source_diff
        if not self.read_only:  # we hold the lock: a crash's debris and cut attempts
            self.recovered = await self._call(recovery.recover, self.index)
        return follow

    async def _early_index(self) -> Index | None:
        """The index loaded from the stamp's sources while the look's workers take the stats
        (another process: no GIL between them), kept if the look finds no folder changed."""
        pending = self._given_look
        if not isinstance(pending, PendingLook) or not pending.in_workers:
            return None
        ids = await self._call(pending.sources_if_unchanged)
        return None if ids is None else await self._call(Index.load, self.ws, self.store, ids)

    async def _take_look(self) -> fastpath.Look | None:
        if self.read_only or not (self.check and self.whole):
            return None
        if isinstance(self._given_look, PendingLook):
            return await self._call(self._given_look.result)
        if self._given_look is not _UNSET:
            return self._given_look
        return await self._call(fastpath.look, self.ws.settings.state_dir)

    async def _start_engine(self, look: fastpath.Look | None) -> None:
        state_dir = self.ws.settings.state_dir
        if not self.read_only:
            # State may change from here on: the stamp goes out of use (kept aside when its
            # paths are to be carried into the stamp written at a clean stop).
            (fastpath.set_aside if look is not None else fastpath.discard)(state_dir)
        self.engine = self._new_engine()
        if not self.read_only:
            await self.engine.start()
        self.mode = "incremental" if look is not None else "full"
        self._catch_up(look)
        if not self.live:
            self.follows = look  # not serve: its packed paths are 10s of MB at 100,000 entities

    def _new_engine(self) -> Engine:
        assert self.index is not None
        stages, entity = self.stages, self.entity
        allow = (
            None
            if self.whole
            else (lambda q, e: (stages is None or q in stages) and entity in (None, e))
        )
        # retry_in_run: serve retries failures through its sweep; a run gives a state one go.
        # one_core: a run's threads may share one core (serve's share the host with its API).
        return Engine(
            self.index,
            self.store,
            jobs=self.jobs,
            allow=allow,
            events=self.events,
            retry_in_run=self.live,
            one_core=not self.live,
        )

    def _catch_up(self, look: fastpath.Look | None) -> None:
        """Follow what changed since the stamp (everything was fresh then), or check every
        selected state."""
        assert self.engine is not None and self.index is not None
        engine, entity = self.engine, self.entity
        targets: Iterable[Target]
        if look is not None:
            self._changed = look.changed
            changes = stamping.changes_since(self.index, self.ws, look, self._source_diff)
            targets = [t for kind, rel in changes for t in engine.affected_by(kind, rel)[0]]
            engine.seed_certs(targets)  # aggregates start from their manifests: no member walk
        else:
            targets = (t for t in engine.targets(self.stages) if entity in (None, t[1]))
            if self.whole:
                self.index.warm()  # every state is checked: one scan, not a query per record
        if not self.live:
            targets = self.initial = list(targets)
            if entity is not None and not self.initial:
                raise UnknownName(f"no selected stage has entity {entity!r}")
        self.caught_up = engine.consider(targets, fresh_pass=True)
        log.info("%s: %s check queued %d state(s)", self.purpose, self.mode, self.caught_up)
        if self.live:
            engine.forget_verdicts()  # now, not during the next event's handling
            self.index.cool()  # and serve keeps only the records its events ask for

    # -- while held ------------------------------------------------------------------------------
    def vouch(self, skipped: int = 0, **recorded: Any) -> None:
        """The work is accounted for: at a clean close, record a stamp (with the count of states
        that needed work and stay blocked, and what else the no-change run is to report again:
        `recorded`, e.g. not_fresh and warnings) so the next start or run needs only stats."""
        self._vouch = skipped
        self._recorded = recorded

    def unstamp(self) -> None:
        """State changed in a way a stamp cannot vouch for: the next start evaluates fully."""
        self._vouch = None

    async def reload(self, ws: Workspace) -> None:
        """New definitions while held: stop the engine (within the grace period), save, load the
        index for them and start a new engine; nothing is checked yet (the caller decides)."""
        assert self.engine is not None and self.index is not None
        self.unstamp()
        await self.engine.stop(self._grace())
        await self._call_save(self.index)
        self.ws = ws
        self.index = await self._call(Index.load, ws, self.store, None)
        self.engine = self._new_engine()
        await self.engine.start()

    async def rescan(self) -> list[Target]:
        """Scan the sources again and apply what differs from the index (run/rescan.py)."""
        return await rescan(self)

    # -- close -----------------------------------------------------------------------------------
    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.close()
        except Exception:  # kept in stop_errors and logged: the body's own error goes on
            if exc_info[1] is None:
                raise

    async def close(self) -> None:
        """Engine stop, index save, stamp, unlock; safe to call twice. Raises, once the lock is
        released, a cancellation (or other interrupt) first, else the first failed step."""
        if self._closed:
            return
        self._closed = True
        await self._release(aborted=not self._started)
        errors = [e for _, e in self.stop_errors]
        interrupts = [e for e in errors if not isinstance(e, Exception)]
        if interrupts or errors:
            raise (interrupts or errors)[0]

    async def _release(self, *, aborted: bool) -> None:
        """The stop steps in order; an aborted start saves and stamps nothing."""
        if isinstance(self._given_look, PendingLook):
            self._given_look.cancel()  # a start that failed before it took the look
        ok = await self._step("engine stop", self._stop_engine)
        if ok and not aborted and not self.read_only:
            ok = await self._step("index save", self._save)
        if ok and not aborted and not self.read_only:
            await self._step("stamp", self._stamp)
        if self.check and not self.read_only:
            previous = self.ws.settings.state_dir / fastpath.PREVIOUS
            await self._step("stamp set aside", _sync(lambda: previous.unlink(missing_ok=True)))
        if self._locked:
            self._locked = False
            await self._step("unlock", _sync(self.store.release_lock))

    async def _step(self, name: str, fn: Callable[[], Awaitable[None]]) -> bool:
        try:
            await fn()
        except BaseException as exc:  # a cancellation too: the later steps must still run
            if name in ("index save", "stamp") and is_environmental(exc):  # a full disk
                text = f"{name} not written ({exc}): the next start is slower, no state is lost"
                self.stop_warnings.append(text)  # a run prints them with its report
                if self.live:
                    log.warning("%s: %s", self.purpose, text)
                return False
            self.stop_errors.append((name, exc))
            log.error("%s: stop step %r failed: %s", self.purpose, name, exc or type(exc).__name__)
            return False
        return True

    async def _stop_engine(self) -> None:
        if self.engine is None:
            return
        try:
            await self.engine.stop(self._grace())
        except asyncio.CancelledError:
            # Cancelled while running handlers finish: cancel them instead (nothing may commit
            # once the lock is released), then let the cancellation go on.
            await self.engine.stop(0)
            raise

    async def _save(self) -> None:
        idx, engine = self.index, self.engine
        if idx is not None and (
            idx.changed
            or (engine is not None and engine.outcome.executed > 0)
            or idx.dirty_path.exists()  # a crash was recovered from: the rebuilt index is true
            or not idx.seal_path.exists()  # first use: the next load reads the cache
        ):
            await self._call_save(idx)

    async def _stamp(self) -> None:
        if self._vouch is None or self.engine is None or not self.engine.stopped_clean:
            return
        wrote = await self._call(self._write_stamp, self._vouch)
        log.info(
            "stamp %s",
            "written: the next start or run needs only stats" if wrote else "not written",
        )

    def _write_stamp(self, skipped: int) -> bool:
        """Vouch for the state when it is provably accounted for (see stamp.write_stamp)."""
        idx, ws, state_dir = self.index, self.ws, self.ws.settings.state_dir
        assert idx is not None
        dirs_before = self._dirs_before
        if self.live:
            # Events kept the index up: vouch only when nothing failed or is held and a fresh
            # scan of the sources agrees with it (no file the watcher had not delivered yet).
            if any(idx.failures.values()) or idx.control.holds:
                return False
            dirs_before = stamping.dir_snapshot(ws)
            root = ws.settings.data_root
            on_disk = {rel for s in ws.graph.sources.values() for rel, _ in scan(s.pattern, root)}
            if on_disk != idx.source_paths():
                return False
        # Incremental: what the stamp we started from vouched for is vouched for again.
        base = self.follows or fastpath.previous(state_dir) if self.mode == "incremental" else None
        if self.mode == "incremental" and base is None:
            return False
        return stamping.write_stamp(
            ws,
            idx,
            skipped,
            base=base,
            dirs_before=dirs_before,
            changed=self._changed,
            recorded=noops.stamp_recorded(idx, self._recorded),
            same_sources=self._same_sources,
            diff=self._source_diff,
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _grace(self) -> float | None:
        """How long running handlers may finish at a stop: serve's setting; a run waits."""
        return self.ws.settings.runtime.shutdown_grace if self.live else None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Slow steps go to a thread while serving (intake and /readyz keep answering)."""
        return await asyncio.to_thread(fn, *args) if self.live else fn(*args)

    async def _call_save(self, idx: Index) -> None:
        # Serve writes in a thread while events go on.
        await save_in_thread(idx) if self.live else idx.save()


def _sync(fn: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        fn()

    return call
