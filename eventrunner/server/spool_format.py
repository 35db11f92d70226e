"""The spool's records and journal format (length-prefixed, checksummed), and the file helpers
the spool's writer and recovery share (no event loop here: they run in the spool's threads)."""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from eventrunner.state.files import syncfs

log = logging.getLogger("eventrunner.spool")

# A record: magic, meta length, body length | xxh3-64 of (head + meta + body) | meta | body.
_HEAD = struct.Struct("<4sIQ")
_SUM = struct.Struct("<Q")
_MAGIC = b"ERJ1"
_MAX_META = 1 << 20
# A batch is refused unless the journal's filesystem keeps this much free beyond twice the
# batch (journal and file): on a full filesystem a write into the journal's last page still
# succeeded, so a body was acknowledged that could never reach its file (issue 14.6).
MIN_FREE_BYTES = 1 << 20


def encode(meta: Mapping[str, Any], body: bytes) -> list[bytes]:
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    head = _HEAD.pack(_MAGIC, len(meta_bytes), len(body))
    return [head, record_checksum(head, meta_bytes, body), meta_bytes, body]


def read_journal(path: Path, end: int | None) -> Iterator[tuple[int, Any, bytes]]:
    """Yield (offset, meta, body) of intact records; stop at a torn tail or at `end`."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        limit = size if end is None else min(size, end)
        offset, fixed = 0, _HEAD.size + _SUM.size
        while offset + fixed <= limit:
            head, checksum = f.read(_HEAD.size), f.read(_SUM.size)
            magic, meta_len, body_len = _HEAD.unpack(head)
            total = fixed + meta_len + body_len
            if magic != _MAGIC or meta_len > _MAX_META or offset + total > limit:
                break
            meta_bytes, body = f.read(meta_len), f.read(body_len)
            if record_checksum(head, meta_bytes, body) != checksum:
                break
            yield offset, json.loads(meta_bytes), body
            offset += total
    if offset < limit:
        log.warning("spool: dropping %d torn bytes at the end of %s", limit - offset, path.name)


def record_checksum(head: bytes, meta_bytes: bytes, body: bytes) -> bytes:
    digest = xxhash.xxh3_64(head)
    digest.update(meta_bytes)
    digest.update(body)
    return _SUM.pack(digest.intdigest())


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def sync_files(files: Iterable[Path], root: Path) -> None:
    """Make written files and their folders durable: one syncfs per filesystem on Linux."""
    folders = {folder for path in files for folder in path.parents if folder.is_relative_to(root)}
    devices = {os.stat(folder).st_dev: folder for folder in folders if folder.exists()}
    for folder in devices.values():
        syncfs(folder)  # one call where fsync per file would cost thousands; raises on failure


def check_free(fd: int, size: int) -> None:
    """OSError(ENOSPC) unless the filesystem of `fd` has room for `size` bytes twice, and then
    some: the journal record, its file, and the checkpoint."""
    st = os.fstatvfs(fd)
    free = st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)
    if free < 2 * size + MIN_FREE_BYTES:
        raise OSError(errno.ENOSPC, f"storage is full ({free} bytes free)")


def check_relpath(relpath: str) -> None:
    parts = PurePosixPath(relpath).parts
    if not parts or relpath.startswith("/") or ".." in parts or "\\" in relpath or "\0" in relpath:
        raise ValueError(f"spool target {relpath!r} is not a plain relative path")


Seen = dict[str, tuple[float, str]]  # message id -> (accepted at, event id)


@dataclass(frozen=True)
class SpoolRecord:
    """One webhook body and where it goes, relative to the data root."""

    relpath: str
    body: bytes
    message_id: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PutResult:
    """The answer to `Spool.put`: the record's event id, or the original's for a duplicate."""

    event_id: str
    duplicate: bool


@dataclass
class Entry:
    record: SpoolRecord
    event_id: str
    ts: float
    seq: int = 0  # journal and offset of the record, set when it is written
    offset: int = 0
