"""Temp names and durable writes: the one copy of each rule every writer of the workspace uses.

Error behaviour, the same everywhere: a failed write, fsync or syncfs raises OSError and is
never retried on the same data. After a failed fsync the kernel may already have dropped the
dirty pages and marked them clean (PostgreSQL's "fsyncgate", 2018), so a second fsync could
report success for data that never reached the disk. The caller gives the write up (its temp
file is removed) and, to retry, writes again from its own copy of the data.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from eventrunner.core.names import TMP_PREFIX

__all__ = [
    "TMP_PREFIX",
    "atomic_write",
    "dumps",
    "fsync_dir",
    "is_own_temp",
    "read_file",
    "remove_path",
    "replace_path",
    "sweep_temps",
    "syncfs",
    "temp_name",
    "temp_path",
    "write_file",
]

# Every temp name carries the tag of the process that made it: the crash sweep removes only
# other processes' debris, never a temp this process is writing right now (e.g. the spool's).
_PROCESS_TAG = os.urandom(3).hex()
_OWN_PREFIX = TMP_PREFIX + _PROCESS_TAG
_counter = itertools.count()
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_EXCL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _floatstr(o: float) -> str:
    """A float as json writes it (allow_nan: NaN, Infinity, -Infinity)."""
    if o != o:
        return "NaN"
    if o == math.inf:
        return "Infinity"
    if o == -math.inf:
        return "-Infinity"
    return float.__repr__(o)


# json's own indented encoder, built once: json.dumps(..., indent=1) builds it on every call,
# a JSONEncoder and a nest of closures that refer to each other, i.e. a reference cycle that
# only the cycle collector frees (a cold run wrote ~30 such objects per manifest and ran a
# collection every few executions). Without a markers dict (no circular check: records are
# plain trees) it keeps no state between calls, so any thread may use it.
_iterencode: Callable[[Any, int], Iterable[str]] = json.encoder._make_iterencode(  # type: ignore[attr-defined]
    None,  # markers
    json.JSONEncoder().default,  # what json raises for a value it cannot encode
    json.encoder.encode_basestring,  # ensure_ascii=False
    " ",  # indent=1
    _floatstr,
    ": ",  # key separator (json's default with an indent)
    ",",  # item separator (json's default with an indent)
    True,  # sort_keys
    False,  # skipkeys
    True,  # one-shot
)


def dumps(value: Any) -> bytes:
    """Sorted-key, indented JSON so state files diff well: byte for byte what
    `json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)` writes."""
    if isinstance(value, str):
        return (json.encoder.encode_basestring(value) + "\n").encode()
    return ("".join(_iterencode(value, 0)) + "\n").encode()


def temp_name(final_name: str) -> str:
    """A fresh temp name for a file to be renamed to `final_name` in the same folder."""
    return f"{_OWN_PREFIX}{next(_counter):x}-{final_name}"[:255]


def temp_path(final: Path) -> Path:
    """A temp name beside `final` (same folder, so rename is atomic); the watcher ignores it."""
    return final.with_name(temp_name(final.name))


def is_own_temp(name: str) -> bool:
    """True for a temp name this process made (see temp_path)."""
    return name.startswith(_OWN_PREFIX)


def write_file(
    path: Path | str, data: bytes, *, fsync: bool = False, exclusive: bool = False
) -> None:
    """Write bytes to a (temp) file with plain os calls: no buffered-file object, no isatty or
    seek probes (per execution on the hot path: each syscall is also a GIL hand-off).
    `exclusive`: FileExistsError if anything (even a dangling link) is at `path` already."""
    fd = os.open(path, _EXCL_FLAGS if exclusive else _WRITE_FLAGS, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path | str) -> bytes:
    """A file's bytes with plain os calls (see write_file); IsADirectoryError for a folder."""
    fd = os.open(path, _READ_FLAGS)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_libc: Any = None


def syncfs(path: Path | str) -> None:
    """Flush every dirty page of the filesystem holding `path`: one call durably commits a batch.

    OSError when the flush fails (see the module docstring: never retry it on the same data).
    Where syncfs(2) does not exist (not Linux), os.sync() stands in; it reports no errors."""
    global _libc
    if _libc is None:
        import ctypes  # loaded on first use: one-shot commands that write nothing skip it

        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if getattr(_libc, "syncfs", None) is None:
            os.sync()
        elif _libc.syncfs(fd) != 0:
            import ctypes

            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs failed on {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temp file in the same folder, (fsync), rename, (fsync the folder). On any failure the
    temp is removed and OSError raised: the old file, if any, is still whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write_file(tmp, data, fsync=durable)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def replace_path(tmp: Path, final: Path) -> None:
    """Move a finished temp file or folder into place; an old folder is swapped out, then removed."""
    try:
        os.replace(tmp, final)  # the usual case, a file over a file (or nothing): one syscall
        return
    except OSError:
        pass  # a folder on either side: below
    if tmp.is_dir() and not tmp.is_symlink():
        if final.is_dir() and not final.is_symlink():
            old = temp_path(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return
        if final.exists() or final.is_symlink():
            final.unlink()
    elif final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(tmp, final)


def remove_path(path: Path | str) -> None:
    """Delete a file, link or folder tree; nothing if it is gone already."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def sweep_temps(folders: Iterable[Path | str]) -> int:
    """Delete the temp files and folders other processes left directly in `folders` (a crash's
    debris; call with the workspace lock held); returns how many. Unreadable folders are skipped."""
    removed = 0
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                stale = [
                    e.path
                    for e in it
                    if e.name.startswith(TMP_PREFIX) and not e.name.startswith(_OWN_PREFIX)
                ]
        except OSError:
            continue
        for path in stale:
            try:
                remove_path(path)
                removed += 1
            except OSError:
                pass
    return removed
