"""Durable webhook intake: a group-committed journal, then atomic files under the data root.

`put()` returns once the record is fsynced in the journal; concurrent puts share one fsync.
Committed records are then written to their files (temp file, rename) in journal order; a
record whose file cannot be written yet (disk full, read-only folder) is tried again with
backoff while the spool runs. A checkpoint says how far that is durable, and a log of written
records (written.py) keeps recovery from writing a file twice, so recovery replays only what
never reached its file. Message ids are remembered for `dedup_ttl`, in the journal and in
`dedup.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eventrunner.core.errors import IntakeFull, StorageError
from eventrunner.core.reserved import Reserved
from eventrunner.run.tasks import ClosesOnce
from eventrunner.server.spool_files import SpoolFiles
from eventrunner.server.spool_format import (
    Entry,
    PutResult,
    Seen,
    SpoolRecord,
    check_relpath,
)
from eventrunner.server.written import WrittenLog
from eventrunner.state.contain import DataRoot

__all__ = ["PutResult", "Spool", "SpoolRecord"]  # the records live in spool_format

log = logging.getLogger("eventrunner.spool")

JOURNAL_MAX_BYTES = 32 << 20
RETRY_DELAYS = (0.2, 10.0)  # retrying unwritten records: first delay, cap (doubling between)
STATS = (  # noqa: SIM905
    "committed duplicates batches fsync_seconds_total storage_errors intake_full"
    " materialised materialise_errors refused recovered rotations"
).split()


class Spool(ClosesOnce, SpoolFiles):
    """Durable, de-duplicating webhook intake; use as an async context manager."""

    def __init__(
        self,
        spool_dir: Path,
        data_root: Path,
        *,
        fsync: bool = True,
        max_pending: int = 1000,
        dedup_ttl: float = 7 * 86400,
        on_materialised: Callable[[SpoolRecord, str], None] | None = None,
        journal_max_bytes: int = JOURNAL_MAX_BYTES,
        reserved: Reserved = (),
    ) -> None:
        self._dir, self._root, self._fsync = spool_dir, data_root, fsync
        self._target = DataRoot(data_root, reserved)
        self._max_pending, self._ttl, self._journal_max = max_pending, dedup_ttl, journal_max_bytes
        self._on_materialised = on_materialised
        self.stats: dict[str, float] = dict.fromkeys(STATS, 0)
        # Event loop state.
        self._seen: Seen = {}
        self._inflight: dict[str, asyncio.Future[PutResult]] = {}
        self._pending: list[tuple[Entry, asyncio.Future[PutResult]]] = []
        self._busy = self._backlog = 0  # puts being committed; committed, files not yet written
        self._wakeup, self._files_progress = asyncio.Event(), asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._files_last: asyncio.Future[Any] | None = None
        self._closing = False
        self._retry_at: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_DELAYS[0]
        # Two threads: the journal one appends and fsyncs, the files one writes files in
        # journal order and checkpoints, so an fsync and file writes overlap.
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="eventrunner-spool")
        self._files = ThreadPoolExecutor(1, thread_name_prefix="eventrunner-spool-files")
        # Journal thread state.
        self._fd: int | None = None
        self._seq = self._offset = self._next_seq = 0
        self._seals: dict[int, int] = {}  # abandoned journal -> end of its committed records
        # Files thread state.
        self._dirty: set[Path] = set()  # written since the last checkpoint
        self._unwritten: dict[str, Entry] = {}  # relpath -> newest record not in its file yet
        self._written = WrittenLog(spool_dir, data_root)
        # Read by the event loop (health, metrics); plain values written by the files thread.
        self.unwritten = 0
        self.last_error = ""

    async def __aenter__(self) -> Spool:
        if self._writer is not None or self._closed:
            raise RuntimeError("a Spool can be opened only once")
        try:
            recovered = await self._run(self._exec, self._start_sync)
        except OSError as exc:
            self._closed = True
            self._shutdown()
            raise StorageError(f"cannot open webhook spool {self._dir}: {exc}") from exc
        for entry in recovered:
            self._notify_one(entry)
        self._writer = asyncio.create_task(self._run_writer(), name="eventrunner-spool-writer")
        self._arm_retry()
        return self

    async def _release(self) -> None:
        """Drain pending puts, checkpoint, and stop (close(), once)."""
        if self._retry_at is not None:
            self._retry_at.cancel()
        if self._writer is not None:
            self._closing = True
            self._wakeup.set()
            with contextlib.suppress(Exception):  # a failed writer has logged already
                await self._writer
            await self._files_idle()
            try:
                await self._run(self._exec, self._close_sync, self._pruned_seen())
            except OSError as exc:
                log.error("spool: final checkpoint failed (records replay at next start): %s", exc)
        self._shutdown()

    async def put(self, record: SpoolRecord) -> PutResult:
        """Store a record durably, or answer duplicate for a message id seen within the TTL."""
        if self._writer is None or self._writer.done() or self._closed:
            raise StorageError("webhook spool is not running")
        check_relpath(record.relpath)
        mid = record.message_id
        if mid:
            seen = self._seen.get(mid)
            if seen is not None and seen[0] >= time.time() - self._ttl:
                self.stats["duplicates"] += 1
                return PutResult(seen[1], duplicate=True)
            if (first := self._inflight.get(mid)) is not None:  # same id still being committed
                result = await asyncio.shield(first)
                self.stats["duplicates"] += 1
                return PutResult(result.event_id, duplicate=True)
        if len(self._pending) + self._busy >= self._max_pending:
            self.stats["intake_full"] += 1
            raise IntakeFull(f"webhook intake has {self._max_pending} records waiting; retry later")
        future: asyncio.Future[PutResult] = asyncio.get_running_loop().create_future()
        if mid:
            self._inflight[mid] = future
        self._pending.append((Entry(record, uuid.uuid4().hex, time.time()), future))
        self._wakeup.set()
        # Shielded: a caller that gives up must not cancel the answer other waiters share.
        return await asyncio.shield(future)

    def recover_sync(self) -> list[SpoolRecord]:
        """Replay un-materialised records without an event loop; returns those written."""
        if self._writer is not None:
            raise RuntimeError("recover_sync() cannot run while the spool is open")
        try:
            return [entry.record for entry in self._recover()]
        except OSError as exc:
            raise StorageError(f"cannot recover webhook spool {self._dir}: {exc}") from exc

    # -- event loop side -------------------------------------------------------------------

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _run_writer(self) -> None:
        try:
            while self._pending or not self._closing:
                if not self._pending:
                    await self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                await self._commit_batch()
        except Exception:
            log.exception("spool: writer failed; failing every waiting put")
            self._fail(self._pending, StorageError("webhook spool writer failed"))
            raise

    async def _commit_batch(self) -> None:
        batch, self._pending = self._pending, []
        entries = [entry for entry, _ in batch]
        self._busy = len(batch)
        try:
            await self._run(self._exec, self._commit, entries)
        except Exception as exc:  # OSError; anything else is a bug, but must not hang puts
            self.stats["storage_errors"] += 1
            log.error("spool: journal write failed, %d puts refused: %s", len(batch), exc)
            self._fail(batch, StorageError(f"webhook spool write failed: {exc}"))
            return
        finally:
            self._busy = 0
        self.stats["batches"] += 1
        self.stats["committed"] += len(batch)
        for entry, future in batch:
            if mid := entry.record.message_id:
                self._seen[mid] = (entry.ts, entry.event_id)
                self._inflight.pop(mid, None)
            if not future.done():
                future.set_result(PutResult(entry.event_id, duplicate=False))
        while self._backlog > self._max_pending:  # bound memory and how far files lag behind
            self._files_progress.clear()
            await self._files_progress.wait()
        self._backlog += len(entries)
        self._schedule_files(len(entries), self._materialise, entries)
        if self._offset >= self._journal_max:
            try:
                await self._run(self._exec, self._open_journal)
            except OSError as exc:
                log.error("spool: journal rotation failed, will retry: %s", exc)
                return
            # Runs after the files of every earlier journal, so they can go.
            self._schedule_files(0, self._checkpoint, self._seq, self._pruned_seen())
            self.stats["rotations"] += 1

    def _schedule_files(self, count: int, fn: Callable[..., Any], *args: Any) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._files, fn, *args)
        future.add_done_callback(functools.partial(self._notify, count))
        self._files_last = future

    async def _files_idle(self) -> None:
        if self._files_last is not None:
            with contextlib.suppress(Exception):  # reported by _notify
                await self._files_last

    def _notify(self, count: int, future: asyncio.Future[Any]) -> None:
        self._backlog -= count
        self._files_progress.set()
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            log.error("spool: files thread failed (records replay at next start): %s", exc)
            return
        for entry in future.result() or ():
            self._notify_one(entry)
        self._arm_retry()

    def _arm_retry(self) -> None:
        """While records are unwritten, try them again after a doubling delay."""
        if not self.unwritten:
            self._retry_delay = RETRY_DELAYS[0]
            return
        if self._retry_at is None and not self._closed:
            delay = self._retry_delay
            self._retry_delay = min(delay * 2, RETRY_DELAYS[1])
            report = log.error if delay == RETRY_DELAYS[0] else log.warning
            report(
                "spool: %d acknowledged webhook(s) not written to their files yet, next try in"
                " %.1fs: %s",
                self.unwritten,
                delay,
                self.last_error,
            )
            self._retry_at = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_at = None
        if not self._closed:
            self._schedule_files(0, self._retry_unwritten)

    def _notify_one(self, entry: Entry) -> None:
        self.stats["materialised"] += 1
        if self._on_materialised is None:
            return
        try:
            self._on_materialised(entry.record, entry.event_id)
        except Exception:
            log.exception("spool: on_materialised failed for %s", entry.record.relpath)

    def _fail(self, batch: list[tuple[Entry, asyncio.Future[PutResult]]], exc: Exception) -> None:
        for entry, future in batch:
            if entry.record.message_id:
                self._inflight.pop(entry.record.message_id, None)
            if not future.done():
                future.set_exception(exc)
        batch.clear()

    def _pruned_seen(self) -> Seen:
        horizon = time.time() - self._ttl
        self._seen = {mid: hit for mid, hit in self._seen.items() if hit[0] >= horizon}
        return dict(self._seen)  # a copy: another thread must not see the loop mutate it

    def _shutdown(self) -> None:
        self._exec.shutdown(wait=False)
        self._files.shutdown(wait=False)

    # -- journal thread ----------------------------------------------------------------------
