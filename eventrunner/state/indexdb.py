"""The index cache on disk: one SQLite file (WAL) read a record at a time, written a change at a time.

`index.sqlite` holds manifests and failures (stage, entity -> packed record), the stat/hash
cache (path -> packed entry) and meta (layout version, control, a token). Every value carries
an xxh3-64 checksum of its key and bytes, checked on every read: a damaged value reads as
`Damaged`, never as a record. A damaged page can also hide rows without any error (a cell
pointer off by a byte: SQLite's own count agrees with the scan), so meta keeps each stage's
manifest count, kept up by every save from the rows it inserted and deleted, and a scan first
checks the b-tree's count against it. A save is one transaction of upserts and deletes that
also sets a new token; the token is then written to `index.seal` (replaced by rename). A reader trusts the
file only when its token is the seal's: a lost or foreign WAL, an older copy of the file, or a
crash between the commit and the seal all read as "no cache" (rebuilt from the manifests).

Two connections: one reads (the loop's thread), one writes (a save's thread); WAL lets the
reader go on during a save and never see a half-applied one.
"""

from __future__ import annotations

import errno
import marshal
import secrets
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from eventrunner.core.records import Control, Failure, Manifest
from eventrunner.state import members as _members_io  # noqa: F401 (the member log reader)
from eventrunner.state.files import atomic_write
from eventrunner.state.indexrecords import (
    SUM,
    Damaged,
    pack_failure,
    pack_manifest,
    seal,
    unpack_failure,
    unpack_manifest,
    unseal,
)

__all__ = ["CACHE_VERSION", "Damaged", "IndexDB", "WriteFailed"]

CACHE_VERSION = 16  # of the layout: another version is rebuilt (16: sealed manifest counts)
LEGACY = ("index.pickle", "index.journal")  # the cache of versions before 13
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
    "CREATE TABLE manifests (stage TEXT, entity TEXT, rec BLOB,"
    " PRIMARY KEY (stage, entity)) WITHOUT ROWID",
    # Each manifest's output and dropped paths alone: narrow scans read a small table.
    "CREATE TABLE outputs (stage TEXT, entity TEXT, outs BLOB,"
    " PRIMARY KEY (stage, entity)) WITHOUT ROWID",
    "CREATE TABLE failures (stage TEXT, entity TEXT, rec BLOB,"
    " PRIMARY KEY (stage, entity)) WITHOUT ROWID",
    "CREATE TABLE files (path TEXT PRIMARY KEY, entry BLOB) WITHOUT ROWID",
)


_BROKEN = (sqlite3.DatabaseError, UnicodeDecodeError)
_PAGE = 4096  # rows a paged scan reads per statement


class WriteFailed(OSError):
    """A save could not be committed (nothing of it is in the file); its errno says why when
    SQLite's code maps to one (a full disk: ENOSPC)."""


# SQLite's primary result codes that are the machine's doing, as the errno they mean.
_ERRNOS = {
    sqlite3.SQLITE_FULL: errno.ENOSPC,
    sqlite3.SQLITE_IOERR: errno.EIO,
    sqlite3.SQLITE_READONLY: errno.EROFS,
}


class IndexDB:
    """The index's SQLite file under a state folder: trusted reads, one-transaction saves."""

    def __init__(self, root: Path) -> None:
        self.path = root / "index.sqlite"
        self.seal_path = root / "index.seal"
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self.fresh = True  # no trusted file: the next save starts a new one
        self.damaged = False  # found damaged: nothing more is read from it

    # -- opening ------------------------------------------------------------------------------
    def open(self) -> bool:
        """Open the file for reading when it is whole, of this layout and sealed by the seal's
        token; False (nothing kept open) otherwise."""
        try:
            sealed = self.seal_path.read_bytes()
            if not self.path.is_file():
                return False
            conn = self._connect()
        except (OSError, *_BROKEN):
            return False
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            ok = (
                unseal("version", meta.get("version")) == str(CACHE_VERSION).encode()
                and unseal("token", meta.get("token")) == sealed
            )
        except (*_BROKEN, Damaged):
            ok = False
        if not ok:
            conn.close()
            return False
        self._reader, self.fresh = conn, False
        return True

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # The seal (fsynced) is written after the commit: a commit lost to a power cut then
        # reads as "no cache", so commits need not be fsynced themselves.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-8192")  # 8 MB of pages; no mmap: mapped pages count as RSS
        return conn

    def close(self) -> None:
        """Close both connections (a later read or save opens again)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The first row of a query (None: none, or no trusted file)."""
        if self.damaged:
            raise Damaged("found damaged before")  # a damaged b-tree may also miss rows
        if self._reader is None:
            return None
        try:
            return self._reader.execute(sql, args).fetchone()
        except _BROKEN as exc:  # a damaged page, or damaged text in a key
            raise Damaged(str(exc)) from exc

    def _paged(self, sql: str, args: tuple[Any, ...] = ()) -> Iterator[Any]:
        """Every row of a keyed query (`sql` ends "KEY > ? ORDER BY KEY LIMIT ?", its first
        column KEY), a page per statement: a reader that pauses between rows (a warm in steps,
        state/lazymap.py) leaves no statement open, which would pin every other read of this
        connection to that statement's snapshot meanwhile, saves committed since unseen."""
        last = ""
        while True:
            if self.damaged:
                raise Damaged("found damaged before")
            if self._reader is None:
                return
            try:
                page = self._reader.execute(sql, (*args, last, _PAGE)).fetchall()
            except _BROKEN as exc:
                raise Damaged(str(exc)) from exc
            yield from page
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> Iterator[Any]:
        """Every row of a query, fetched in batches (nothing without a trusted file)."""
        if self.damaged:
            raise Damaged("found damaged before")
        if self._reader is None:
            return
        try:
            cur = self._reader.execute(sql, args)
            while rows := cur.fetchmany(4096):
                yield from rows
        except _BROKEN as exc:  # a damaged page, or damaged text in a key
            raise Damaged(str(exc)) from exc

    # -- reading ------------------------------------------------------------------------------
    def control(self) -> Control | None:
        row = self._one("SELECT value FROM meta WHERE key = 'control'", ())
        if row is None:
            return None
        try:
            return Control.from_json(marshal.loads(unseal("control", row[0])))
        except (ValueError, EOFError, TypeError) as exc:
            raise Damaged("control") from exc

    def failures(self) -> Iterator[Failure]:
        for q, eid, rec in self._rows("SELECT stage, entity, rec FROM failures"):
            yield unpack_failure(q, eid, rec)

    def manifest(self, q: str, eid: str) -> Manifest | None:
        row = self._one("SELECT rec FROM manifests WHERE stage = ? AND entity = ?", (q, eid))
        return None if row is None else self._located(unpack_manifest(q, eid, row[0]))

    def manifests(self, q: str) -> Iterator[tuple[str, Manifest]]:
        """(entity, manifest) of every manifest of a stage, in entity order."""
        self._check_count("manifests", q)
        sql = (
            "SELECT entity, rec FROM manifests WHERE stage = ? AND entity > ?"
            " ORDER BY entity LIMIT ?"
        )
        for eid, rec in self._paged(sql, (q,)):
            yield eid, self._located(unpack_manifest(q, eid, rec))

    def _located(self, m: Manifest) -> Manifest:
        """Member tables' logs are beside the manifest files (state/<stage>/)."""
        return m.locate(str(self.path.parent / "state" / m.stage)) if m.members else m

    def manifest_outputs_of(
        self, q: str
    ) -> Iterator[tuple[str, tuple[tuple[str, ...], tuple[str, ...]]]]:
        """(entity, (output paths, dropped paths)) of every manifest of a stage, in entity
        order, from the narrow table (one tight loop: this runs at every run's stray check)."""
        self._check_count("outputs", q)
        digest, loads, prefix = xxhash.xxh3_64_digest, marshal.loads, q + "\0"
        sql = (
            "SELECT entity, outs FROM outputs WHERE stage = ? AND entity > ?"
            " ORDER BY entity LIMIT ?"
        )
        rows = self._paged(sql, (q,))
        for eid, outs in rows:
            data = outs[SUM:]
            if digest((prefix + eid).encode("utf-8", "surrogatepass") + b"\0" + data) != outs[:SUM]:
                raise Damaged(prefix + eid)
            try:
                yield eid, loads(data)
            except (ValueError, EOFError, TypeError) as exc:
                raise Damaged(prefix + eid) from exc

    def _check_count(self, table: str, q: str) -> None:
        """Damaged unless the b-tree holds as many rows of stage `q` as the saves put there (one
        snapshot for both: a save may commit between the statements of a paged scan)."""
        if self.damaged:
            raise Damaged("found damaged before")
        if self._reader is None:
            return
        try:
            self._reader.execute("BEGIN")
            try:
                saved = _saved_counts(self._reader).get(q, 0)
                (found,) = self._reader.execute(
                    f"SELECT count(*) FROM {table} WHERE stage = ?", (q,)
                ).fetchone()
            finally:
                self._reader.execute("COMMIT")
        except _BROKEN as exc:
            raise Damaged(str(exc)) from exc
        if found != saved:
            raise Damaged(f"{table} of {q}: {found} rows, {saved} saved")

    def file_entry(self, rel: str) -> bytes | None:
        row = self._one("SELECT entry FROM files WHERE path = ?", (rel,))
        return None if row is None else unseal(rel, row[0])

    def file_entries(self) -> Iterator[tuple[str, bytes]]:
        for rel, entry in self._paged(
            "SELECT path, entry FROM files WHERE path > ? ORDER BY path LIMIT ?"
        ):
            yield sys.intern(rel), unseal(rel, entry)

    # -- writing ------------------------------------------------------------------------------
    def write(self, changes: dict[str, Any]) -> None:
        """One transaction of the changes (None: deleted) and a new token, then the seal: either
        all of them are in the file and sealed, or the seal disagrees (WriteFailed raised)."""
        try:
            fresh = self.fresh
            conn = self._writer_conn()
            token = secrets.token_bytes(16)
            conn.execute("BEGIN IMMEDIATE")
            try:
                _apply(conn, changes, token, fresh)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, UnicodeDecodeError, Damaged) as exc:
            text = f"index cache {self.path}: {exc}"
            code = _ERRNOS.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
            raise (WriteFailed(code, text) if code else WriteFailed(text)) from exc
        atomic_write(self.seal_path, token, durable=True)
        self.fresh = False

    def _writer_conn(self) -> sqlite3.Connection:
        if self.fresh:  # a new file: whatever is there is not trusted (damaged, foreign, old)
            self.close()
            self.seal_path.unlink(missing_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            for old in LEGACY:  # an older version's cache, never read again
                (self.path.parent / old).unlink(missing_ok=True)
            conn = self._connect()
            for sql in _SCHEMA:
                conn.execute(sql)
            self._writer = conn
            self._reader = self._connect()
        elif self._writer is None:
            self._writer = self._connect()
        return self._writer


def _saved_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Stage -> manifest rows, as the last save put them in meta (Damaged unless it checks out)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'counts'").fetchone()
    if row is None:
        return {}
    try:
        counts = marshal.loads(unseal("counts", row[0]))
    except (ValueError, EOFError, TypeError) as exc:
        raise Damaged("counts") from exc
    if not isinstance(counts, dict):
        raise Damaged("counts")
    return counts


def _apply_manifests(conn: sqlite3.Connection, changes: dict[str, Any], fresh: bool) -> bytes:
    """Each stage's manifest and output rows upserted or deleted; the new counts (packed). An
    update then an insert-or-ignore, not a replace: their row counts say which rows are new."""
    counts = {} if fresh else _saved_counts(conn)
    for q, ms in changes["manifests"].items():
        puts, outs, dels = [], [], []
        for eid, m in ms.items():
            if m is None:
                dels.append((q, eid))
            else:
                out, rec = pack_manifest(m)
                puts.append((q, eid, rec))
                outs.append((q, eid, out))
        gone = conn.executemany(
            "DELETE FROM manifests WHERE stage = ? AND entity = ?", dels
        ).rowcount
        conn.executemany("DELETE FROM outputs WHERE stage = ? AND entity = ?", dels)
        if not fresh:  # a new file has no rows to update
            conn.executemany("UPDATE manifests SET rec = ?3 WHERE stage = ?1 AND entity = ?2", puts)
        new = conn.executemany("INSERT OR IGNORE INTO manifests VALUES (?, ?, ?)", puts).rowcount
        conn.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)", outs)
        counts[q] = counts.get(q, 0) + new - gone
    return marshal.dumps(counts)


def _apply(conn: sqlite3.Connection, changes: dict[str, Any], token: bytes, fresh: bool) -> None:
    put_f, del_f, put_files, del_files = [], [], [], []
    counts = _apply_manifests(conn, changes, fresh)
    for (q, eid), f in changes["failures"].items():
        if f is None:
            del_f.append((q, eid))
        else:
            put_f.append((q, eid, pack_failure(f)))
    for rel, entry in changes["files"].items():
        if entry is None:
            del_files.append((rel,))
        else:
            put_files.append((rel, seal(rel, entry)))
    conn.executemany("DELETE FROM failures WHERE stage = ? AND entity = ?", del_f)
    conn.executemany("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", put_f)
    conn.executemany("DELETE FROM files WHERE path = ?", del_files)
    conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?)", put_files)
    meta = [("version", str(CACHE_VERSION).encode()), ("token", token), ("counts", counts)]
    if changes["control"] is not None:
        meta.append(("control", marshal.dumps(changes["control"].to_json())))
    conn.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, seal(k, v)) for k, v in meta]
    )
