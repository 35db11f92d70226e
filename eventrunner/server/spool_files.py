"""The spool's blocking half, run in its two threads: journal appends and rotation, writing
records to their files, checkpoints, and recovery at start. A part of the Spool class (its state
is the spool's), kept apart so that each half reads in one sitting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eventrunner.core.errors import PatternError
from eventrunner.server.spool_format import (
    Entry,
    Seen,
    SpoolRecord,
    check_free,
    encode,
    read_journal,
    sync_files,
    write_all,
)
from eventrunner.server.written import WrittenLog
from eventrunner.state.contain import DataRoot
from eventrunner.state.files import atomic_write, fsync_dir

log = logging.getLogger("eventrunner.spool")


class SpoolFiles:
    """The Spool's thread-side methods (a mixin: Spool declares the state)."""

    _dir: Path
    _root: Path
    _fsync: bool
    _target: DataRoot
    _ttl: float
    _journal_max: int
    stats: dict[str, float]
    _seen: Seen
    _fd: int | None
    _seq: int
    _offset: int
    _next_seq: int
    _seals: dict[int, int]
    _dirty: set[Path]
    _unwritten: dict[str, Entry]
    _written: WrittenLog
    unwritten: int
    last_error: str

    def _commit(self, entries: list[Entry]) -> None:
        """Append a batch with one fsync; on failure leave nothing recovery would accept."""
        if self._fd is None:
            self._open_journal()
        assert self._fd is not None
        start = pos = self._offset
        parts: list[bytes] = []
        for entry in entries:
            rec = entry.record
            meta = dict(k="rec", id=entry.event_id, ts=entry.ts, path=rec.relpath)
            encoded = encode(meta | {"mid": rec.message_id, "meta": dict(rec.meta)}, rec.body)
            entry.seq, entry.offset = self._seq, pos
            pos += sum(map(len, encoded))
            parts += encoded
        blob = b"".join(parts)
        check_free(self._fd, len(blob))
        try:
            write_all(self._fd, blob)
            if self._fsync:
                began = time.perf_counter()
                os.fdatasync(self._fd)
                self.stats["fsync_seconds_total"] += time.perf_counter() - began
        except OSError:
            self._roll_back(start)
            raise
        self._offset = pos

    def _roll_back(self, start: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, start)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # The tail may hold whole records of the refused batch: seal this journal at
            # `start` (the seal opens the next journal) and never append to it again.
            log.error("spool: cannot truncate journal %d back (%s); sealing it", self._seq, exc)
            self._seals[self._seq] = start
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _open_journal(self) -> None:
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        self._seals = {s: end for s, end in self._seals.items() if self._journal(s).exists()}
        self._seals[seq] = 0  # until it is durably open, this journal holds nothing
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(self._journal(seq), flags, 0o600)
        try:
            seals = {str(s): end for s, end in self._seals.items() if s != seq}
            blob = b"".join(encode({"k": "seal", "seals": seals}, b"")) if seals else b""
            write_all(fd, blob)
            if self._fsync:
                os.fsync(fd)
                fsync_dir(self._dir)
        except OSError:
            os.close(fd)
            raise
        del self._seals[seq]
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._seq, self._offset = fd, seq, len(blob)

    def _close_sync(self, seen: Seen) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._checkpoint(self._next_seq, seen)

    # -- files thread ------------------------------------------------------------------------

    def _materialise(self, entries: list[Entry]) -> list[Entry]:
        """Write records to their files in order; those that fail wait in `_unwritten`."""
        done: list[Entry] = []
        marks: dict[int, list[int]] = {}
        for entry in entries:
            relpath = entry.record.relpath
            try:
                canonical = self._target.write(relpath, entry.record.body)
            except PatternError as exc:  # led out of the root or onto code: never written
                self.stats["refused"] += 1
                log.error("spool: refusing to write acknowledged %s: %s", relpath, exc)
            except OSError as exc:
                self.stats["materialise_errors"] += 1
                self.last_error = f"cannot write {relpath}: {exc}"
                self._unwritten[relpath] = entry  # the newest record of a path is the one due
                continue
            else:
                self._dirty.add(self._root / canonical)
                done.append(entry)
            waiting = self._unwritten.get(relpath)
            if waiting is not None and (waiting.seq, waiting.offset) <= (entry.seq, entry.offset):
                del self._unwritten[relpath]  # superseded by the record just handled
            marks.setdefault(entry.seq, []).append(entry.offset)
        try:
            self._written.mark(marks)
        except OSError as exc:  # only costs a second write of these files after a crash
            log.warning("spool: cannot log written records: %s", exc)
        self.unwritten = len(self._unwritten)
        return done

    def _retry_unwritten(self) -> list[Entry]:
        waiting = sorted(self._unwritten.values(), key=lambda e: (e.seq, e.offset))
        self._unwritten = {}
        return self._materialise(waiting)

    def _checkpoint(self, upto: int, seen: Seen) -> None:
        """Make written files durable, record where replay starts, drop older journals."""
        if self._fsync:
            sync_files(self._dirty, self._root)
        self._dirty.clear()
        seq, offset = min(((e.seq, e.offset) for e in self._unwritten.values()), default=(upto, 0))
        self._write_json("dedup.json", {"ids": {mid: list(hit) for mid, hit in seen.items()}})
        self._write_json("checkpoint.json", {"journal": seq, "offset": offset})
        if self._fsync:
            fsync_dir(self._dir)
        self._written.drop_before(seq)  # before the journals: gone with them, not after
        for old, path in self._journals():
            if old < seq:  # never the open journal: its seq is at least `seq`
                path.unlink()

    def _write_json(self, name: str, data: Mapping[str, Any]) -> None:
        payload = json.dumps(data, sort_keys=True).encode()
        atomic_write(self._dir / name, payload, durable=self._fsync)

    # -- recovery (no thread runs yet) -------------------------------------------------------

    def _start_sync(self) -> list[Entry]:
        entries = self._recover()
        self._open_journal()
        return entries

    def _recover(self) -> list[Entry]:
        self._dir.mkdir(parents=True, exist_ok=True)
        checkpoint = self._load_json("checkpoint.json")
        cp = (int(checkpoint.get("journal", 0)), int(checkpoint.get("offset", 0)))
        horizon = time.time() - self._ttl
        ids = self._load_json("dedup.json").get("ids", {})
        seen: Seen = {mid: (ts, eid) for mid, (ts, eid) in ids.items() if ts >= horizon}
        journals = self._journals()
        seals: dict[int, int] = {}
        for _, path in journals:  # a seal opens the journal after the one it bounds
            for _, meta, _ in read_journal(path, None):
                if meta.get("k") == "seal":
                    seals.update({int(s): int(end) for s, end in meta["seals"].items()})
                break
        after: list[Entry] = []
        for seq, path in journals:
            for offset, meta, body in read_journal(path, seals.get(seq)):
                if meta.get("k") != "rec":
                    continue
                if meta["mid"] and meta["ts"] >= horizon:
                    seen[meta["mid"]] = (meta["ts"], meta["id"])
                if (seq, offset) >= cp:
                    record = SpoolRecord(meta["path"], body, meta["mid"], meta["meta"])
                    after.append(Entry(record, meta["id"], meta["ts"], seq, offset))
        self._seen, self._seals, self._unwritten = seen, seals, {}
        self._next_seq = max([cp[0], *(seq + 1 for seq, _ in journals)])
        replay = self._not_written(after)
        done = self._materialise(replay)
        self.stats["recovered"] += len(done)
        if after:
            log.info(
                "spool: replayed %d of %d records from the journal (%d were in their files)",
                len(done),
                len(after),
                len(after) - len(replay),
            )
        self._checkpoint(self._next_seq, dict(seen))
        return done

    def _not_written(self, entries: list[Entry]) -> list[Entry]:
        """Records that never reached their files: the newest of each path, unless the written
        log has it. Replaying the others would revert a later edit or undo a deletion."""
        newest = {entry.record.relpath: entry for entry in entries}
        written = {seq: self._written.load(seq) for seq in {entry.seq for entry in entries}}
        return [
            entry
            for entry in entries
            if newest[entry.record.relpath] is entry and entry.offset not in written[entry.seq]
        ]

    def _load_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self._dir / name).read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("spool: ignoring unreadable %s", name)
            return {}
        return data if isinstance(data, dict) else {}

    def _journal(self, seq: int) -> Path:
        return self._dir / f"journal-{seq:08d}.log"

    def _journals(self) -> list[tuple[int, Path]]:
        found = []
        for path in self._dir.glob("journal-*.log"):
            with contextlib.suppress(ValueError):
                found.append((int(path.stem.removeprefix("journal-")), path))
        return sorted(found)
