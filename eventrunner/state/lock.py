"""The one-writer lock of a workspace: a POSIX record lock on `.eventrunner/lock`.

Record locks (fcntl F_SETLK) rather than flock(2): a flock belongs to the open file, which a
forked child shares, so a handler's forked child kept the workspace locked after the process
that took it had gone (issue 14, point 12). A record lock belongs to the process: a child never
holds it, and the kernel drops it when its holder dies. Two properties of record locks need
care, both handled here: a second lock taken by the same process on the same file succeeds
(so this process's own locks are kept in `_HELD` and refused by name), and closing *any*
descriptor of the file drops the lock (so while this process holds it, the holder's details
are read through the locked descriptor, never by opening the file again).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from eventrunner.core.errors import LockHeld
from eventrunner.state.files import dumps

# (st_dev, st_ino) of each lock file this process holds -> the locked descriptor.
_HELD: dict[tuple[int, int], int] = {}


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class WorkspaceLock:
    """Take with `acquire(purpose)`, give back with `release()` (safe to call twice)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.crashed_before = False  # set by acquire: the previous holder did not stop cleanly

    def acquire(self, purpose: str) -> None:
        """Take the lock; LockHeld names the holder when another process (or this one) has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ident = _ident(self.path)
        if ident is not None and ident in _HELD:  # checked before opening: see the module doc
            raise LockHeld(f"workspace is locked by {self.holder() or 'another process'}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LockHeld(f"workspace is locked by {self.holder() or 'another process'}") from None
        # A holder that exits cleanly empties the file; content left means it crashed (or was
        # killed), so its temp files may litter the workspace.
        self.crashed_before = bool(os.pread(fd, 1, 0))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "since": time.time(),
        }
        data = dumps(info)
        try:
            # Written over, then cut to length: a write that fails (a full disk) never leaves
            # the file empty, which would tell the next holder that a crashed one stopped clean.
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError as exc:  # not taken; the error names the file
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        st = os.fstat(fd)
        _HELD[(st.st_dev, st.st_ino)] = fd
        self._fd = fd

    def release(self) -> None:
        """Empty the file (a clean stop) and drop the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        st = os.fstat(fd)
        _HELD.pop((st.st_dev, st.st_ino), None)
        os.ftruncate(fd, 0)
        os.close(fd)

    def holder(self) -> str | None:
        """Who holds the lock, as text ("eventrunner serve (pid 123 on host)")."""
        ident = _ident(self.path)
        try:
            if ident is not None and ident in _HELD:
                raw = os.pread(_HELD[ident], 4096, 0)
            else:
                raw = self.path.read_bytes()
            info = json.loads(raw)
        except (FileNotFoundError, ValueError):
            return None
        return (
            f"eventrunner {info.get('purpose', '?')} (pid {info.get('pid')} on {info.get('host')})"
        )
