"""Which webhook journal records reached their files: one small append-only log per journal.

Replay after a crash must never write a record again once its file was written: the file may
have been edited or deleted by hand since, and replaying it reverted the edit or brought the
file back (issue 14.5). The files thread appends a record's offset here right after its rename.

The log is not fsynced, so it is trusted only where the page cache it sits in survived: in the
same boot (a SIGKILL keeps the page cache; a power loss or an OS crash may lose a rename the
log already shows) and for the same data root folder. Otherwise replay writes the records again,
which may revert an edit but never loses an acknowledged body.
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import xxhash

_ENTRY = struct.Struct("<QQ")  # journal offset, xxh3-64 of (header + offset)
_HEADER = struct.Struct("<16sQQ")  # boot id, data root st_dev, st_ino
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> bytes:
    """This boot's id (Linux); zeros where unknown, which are never trusted."""
    try:
        return uuid.UUID(_BOOT_ID.read_text().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


class WrittenLog:
    """`written-<journal>.log` files in the spool folder; used from the spool's files thread."""

    def __init__(self, spool_dir: Path, data_root: Path) -> None:
        self._dir = spool_dir
        self._root = data_root
        self._header: bytes | None = None

    def path(self, seq: int) -> Path:
        """The log of journal `seq`."""
        return self._dir / f"written-{seq:08d}.log"

    def mark(self, offsets: Mapping[int, Iterable[int]]) -> None:
        """Record that the records at these offsets (journal -> offsets) are in their files."""
        header = self._current()
        if header is None:
            return
        for seq, offs in offsets.items():
            data = b"".join(_ENTRY.pack(o, _check(header, o)) for o in offs)
            if not data:
                continue
            fd = os.open(
                self.path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            try:
                if os.fstat(fd).st_size == 0:
                    data = header + data
                os.write(fd, data)
            finally:
                os.close(fd)

    def load(self, seq: int) -> set[int]:
        """Offsets of journal `seq` known written; empty unless the log is this boot's and this
        data root's. A torn or garbled entry ends the log (its record is then replayed)."""
        header = self._current()
        try:
            raw = self.path(seq).read_bytes()
        except FileNotFoundError:
            return set()
        if header is None or header[:16] == bytes(16) or raw[: _HEADER.size] != header:
            return set()
        found: set[int] = set()
        for pos in range(_HEADER.size, len(raw) - _ENTRY.size + 1, _ENTRY.size):
            offset, check = _ENTRY.unpack_from(raw, pos)
            if check != _check(header, offset):
                break
            found.add(offset)
        return found

    def drop_before(self, seq: int) -> None:
        """Remove the logs of journals before `seq` (their journals are gone)."""
        for path in self._dir.glob("written-*.log"):
            with contextlib.suppress(ValueError, FileNotFoundError):
                if int(path.stem.removeprefix("written-")) < seq:
                    path.unlink()

    def _current(self) -> bytes | None:
        if self._header is None:
            try:
                st = os.stat(self._root)
            except OSError:
                return None  # no data root yet: nothing was written to it either
            self._header = _HEADER.pack(_boot_id(), st.st_dev, st.st_ino)
        return self._header


def _check(header: bytes, offset: int) -> int:
    return xxhash.xxh3_64_intdigest(header + offset.to_bytes(8, "little"))
