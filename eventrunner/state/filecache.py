"""The stat/hash cache: a file's content hash for the price of one stat while it is unchanged.

Kept in the index cache (`.eventrunner/index.sqlite`, read an entry at a time: state/lazymap.py).
An entry is trusted only while the file's size, mtime and inode are those it was hashed with, and never for a file modified so
recently that it could change again within the same mtime tick (git's "racily clean" files).
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import time
from pathlib import Path

from eventrunner.state.hashing import hash_file, hash_path, hash_tree
from eventrunner.state.lazymap import LazyMap

# A file modified this recently may be modified again within the same mtime tick; don't trust
# its cached hash (git's "racily clean" problem).
RACY_NS = 50_000_000

# One packed bytes object per file, (size, mtime_ns, inode, 16-byte digest): ~75 bytes instead
# of ~220 for an object with four fields (300,000 files at 100,000 entities).
_STAT = struct.Struct("<qqQ16s")
_KEY = struct.Struct("<qqQ")


def pack_stat(size: int, mtime_ns: int, ino: int, digest: str) -> bytes | None:
    """One stat-cache entry; None for a digest that is not 32 hex digits (not cached then)."""
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    return _STAT.pack(size, mtime_ns, ino, raw) if len(raw) == 16 else None


def unpack_stat(entry: bytes) -> tuple[int, int, int, str]:
    """(size, mtime_ns, inode, hex digest) of a stat-cache entry."""
    size, mtime_ns, ino, raw = _STAT.unpack(entry)
    return size, mtime_ns, ino, raw.hex()


def _trusted_mtime(st: os.stat_result) -> int:
    """The mtime an entry is keyed on; -1 (never matches a stat) for a folder, whose stat does
    not change when a file inside it is edited in place: a folder is hashed at every check."""
    return -1 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns


class FileCache:
    """relpath -> packed (size, mtime_ns, inode, digest) under one data root (`entries`: read
    from the index file on demand; without one, in memory only)."""

    def __init__(self, root: Path, entries: LazyMap[bytes] | None = None) -> None:
        self._prefix = os.path.join(os.fspath(root), "")  # "root/": relpaths are "/"-joined
        self.entries = LazyMap[bytes](lambda _: None, tuple, tuple) if entries is None else entries
        self._racy: set[str] = set()  # entries `remember` added since the last snapshot
        # Files whose stats this process found different from the cache (hashed, written or
        # gone): an incremental stamp re-reads only these (stamp.write_stamp).
        self.touched: set[str] = set()
        self.written: set[str] = set()  # outputs this process wrote (trusted: see remember)
        self.changed = False  # learned something the saved cache lacks

    def hash(self, relpath: str) -> str | None:
        """Content hash through the stat fast path; None when the file is missing."""
        path = self._prefix + relpath
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.forget(relpath)
            return None
        entry = self.entries.get(relpath)
        if entry is not None and entry[:24] == _KEY.pack(st.st_size, st.st_mtime_ns, st.st_ino):
            return entry[24:].hex()
        self.touched.add(relpath)
        try:  # the stat above already tells a folder from a file (hash_path would stat again)
            digest = hash_tree(path) if stat.S_ISDIR(st.st_mode) else hash_file(path)
        except (IsADirectoryError, NotADirectoryError):  # swapped for the other kind meanwhile
            try:
                digest = hash_path(path)
            except FileNotFoundError:
                return None
        except FileNotFoundError:
            return None
        entry = pack_stat(st.st_size, _trusted_mtime(st), st.st_ino, digest)
        if entry is not None and time.time_ns() - st.st_mtime_ns > RACY_NS:
            self.entries[sys.intern(relpath)] = entry
            self.changed = True
        elif self.entries.pop(relpath, None) is not None:
            self.changed = True
        return digest

    def remember(self, relpath: str, digest: str, st: os.stat_result | None = None) -> None:
        """Cache the hash of a file we just wrote (so its next check costs one stat); `st`:
        its stat taken just after it was put in place, if the caller has it."""
        if st is None:
            try:
                st = os.stat(self._prefix + relpath)
            except FileNotFoundError:
                return
        # We produced this content and hashed it: trusted in memory; a snapshot demotes entries
        # still inside the racy window so a later process re-hashes them once.
        entry = pack_stat(st.st_size, _trusted_mtime(st), st.st_ino, digest)
        if entry is None:
            self.forget(relpath)
            return
        relpath = sys.intern(relpath)
        self.entries[relpath] = entry
        self._racy.add(relpath)
        self.written.add(relpath)
        self.touched.add(relpath)
        self.changed = True

    def forget(self, relpath: str) -> None:
        """Drop a file's entry (it is gone, or about to be)."""
        if self.entries.pop(relpath, None) is not None:
            self.changed = True
        self.touched.add(relpath)

    def delta(self) -> dict[str, bytes | None]:
        """The entries changed since the last save (None: dropped), those of our own writes
        still inside the racy window demoted first (in memory too, so the next check of such a
        file hashes it once more): what a save writes. O(changed)."""
        self._demote_racy()
        self.changed = False
        return self.entries.taken()

    def _demote_racy(self) -> None:
        racy = time.time_ns() - RACY_NS
        for rel in self._racy:
            entry = self.entries.get(rel)
            if entry is not None:
                size, mtime_ns, ino, raw = _STAT.unpack(entry)
                if mtime_ns > racy:  # may change again within its mtime tick
                    self.entries[rel] = _STAT.pack(size, -1, ino, raw)
        self._racy.clear()
