"""Group commit: many finished runs share one durability barrier (syncfs) instead of an fsync each.

Order within a batch keeps the crash guarantee with one barrier per batch: outputs (written by
the handlers' threads) and manifests are written to temp files; one sync makes all their
contents durable; then every output is renamed into place, and only then every manifest. The
renames become durable at the next batch's sync (or at close); journaling filesystems persist
renames in the order they were issued, so a crash keeps a prefix of them. Whatever prefix
survives, no manifest vouches for content that is not on disk: a manifest is only ever renamed
after its output's content was synced and its output renamed, and after a crash the index is
dirty, so every output is re-hashed against its manifest and any disagreement reads as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from eventrunner.core.errors import is_environmental
from eventrunner.core.records import AttemptOutput, Failure, Manifest
from eventrunner.state.files import replace_path, syncfs
from eventrunner.state.store import Store

log = logging.getLogger("eventrunner.commit")


@dataclass
class Commit:
    """One unit to make durable: a success (temps + manifest) or a failure record."""

    manifest: Manifest | None = None
    temps: list[tuple[Path, Path]] = field(default_factory=list)
    failure: Failure | None = None
    clear_failure: bool = False
    output: AttemptOutput | None = None  # what the attempt printed, when it printed anything
    # Filled by the committer's thread just after the outputs' renames: final path -> its stat,
    # for the index's stat cache (else the event loop would stat each new output once more).
    stats: dict[str, os.stat_result] = field(default_factory=dict)


# Told on the loop how one commit went: None once it is durable and in place, else the error.
Done = Callable[[BaseException | None], None]


class Committer:
    """Batches commits; `submit` returns once its commit is durable and in place, `submit_then`
    calls back instead (no future and no task wake-up per commit). `after_batch` is called on
    the loop once every commit of a batch has been told: the engine follows a whole batch's
    outputs downstream in one pass."""

    def __init__(
        self, store: Store, data_root: Path, after_batch: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.data_root = data_root
        self.after_batch = after_batch
        self._queue: asyncio.Queue[tuple[Commit, asyncio.Future[None] | Done]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.commits = 0
        self.sync_seconds = 0.0
        self._roots: list[Path] = []

    async def __aenter__(self) -> Committer:
        self.store.ensure()
        self.data_root.mkdir(parents=True, exist_ok=True)  # a webhook-only workspace starts empty
        self._roots = [self.data_root]
        if os.stat(self.store.root).st_dev != os.stat(self.data_root).st_dev:
            self._roots.append(self.store.root)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Finish queued commits, make the last renames durable, stop. Safe to call twice."""
        if self._task is None or self._queue is None:
            return
        await self.flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.batches:
            await asyncio.to_thread(self._barrier)  # the last batch's manifest renames

    async def flush(self) -> None:
        """Return once every commit queued so far has been written and told (callbacks run)."""
        if self._queue is not None:
            await self._queue.join()

    async def submit(self, commit: Commit) -> None:
        """Queue a commit and wait until it is durable."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(commit, fut)
        await fut

    def submit_then(self, commit: Commit, done: Done) -> None:
        """Queue a commit; `done(None)` (durable and in place) or `done(error)` is called on
        the loop with the rest of its batch, before `after_batch`."""
        self._put(commit, done)

    def _put(self, commit: Commit, waiter: asyncio.Future[None] | Done) -> None:
        if self._queue is None:
            raise RuntimeError("committer is not running")
        self._queue.put_nowait((commit, waiter))  # unbounded: never waits

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            error: BaseException | None = None
            try:
                await asyncio.to_thread(self._write_batch, [c for c, _ in batch])
            except Exception as exc:
                if is_environmental(exc):  # a full disk is the machine's, not a bug: one line
                    log.error("commit of %d states failed: %s", len(batch), exc)
                else:
                    log.exception("commit of %d states failed", len(batch))
                error = exc
            try:
                for _, waiter in batch:
                    _tell(waiter, error)
                if self.after_batch is not None:
                    self.after_batch()
            except Exception:  # the engine's follow-up: logged, the committer goes on
                log.exception("internal error after a group commit")
            finally:
                for _ in batch:
                    self._queue.task_done()

    @staticmethod
    def _parallel(fn: Callable[[Any], object], items: list[Any]) -> None:
        """Apply fn to each item in turn. A thread pool here was measured slower on 2 cores:
        every file operation releases the GIL, and the hand-offs (futex) cost more than the
        overlap gained."""
        for item in items:
            fn(item)

    def _barrier(self) -> None:
        import time

        t0 = time.perf_counter()
        for root in self._roots:
            syncfs(root)
        self.sync_seconds += time.perf_counter() - t0

    def _write_batch(self, batch: list[Commit]) -> None:
        """Write one batch in the order the module docstring gives. A failure at any step
        raises with the batch's record temps removed; nothing is retried on the same data."""
        records = [r for c in batch for r in (c.manifest, c.failure, c.output) if r is not None]
        staged = self.store.stage(records)  # 1. records beside their place
        try:
            self._barrier()  # 2. outputs' and records' contents (and the last renames) durable
            moves = [pair for c in batch for pair in c.temps]
            self._parallel(lambda pair: replace_path(*pair), moves)  # 3. outputs in place
            self.store.install(staged)  # 4. manifests in place: fresh
        except BaseException:
            self.store.abandon(staged)
            raise
        for c in batch:
            for _, final in c.temps:
                with contextlib.suppress(OSError):  # the loop stats it itself then
                    c.stats[os.fspath(final)] = os.stat(final)
        for c in batch:
            if c.clear_failure and c.manifest is not None:
                try:
                    self.store.delete_failure(c.manifest.stage, c.manifest.entity)
                except OSError as exc:  # the new manifest already outranks it
                    log.error("could not delete a failure record: %s", exc)
        self.batches += 1
        self.commits += len(batch)


def _tell(waiter: asyncio.Future[None] | Done, error: BaseException | None) -> None:
    """Resolve a submit's future, or call a submit_then's callback (its errors are logged)."""
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
        return
    try:
        waiter(error)
    except Exception:
        log.exception("internal error after a commit")
