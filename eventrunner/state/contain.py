"""Writing below the data root without ever leaving it, and the path checks that go with it.

`DataRoot.write` makes the check and the write one operation (issue 14.2): every folder is
opened relative to the one before it with O_NOFOLLOW, a symlink met on the way is read and its
target walked the same way (from the root for an absolute one), and the file is created and
renamed inside the folder descriptor that was checked. A folder swapped for a symlink after
the check cannot redirect the write: there is no path lookup left to race with.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from pathlib import Path

from eventrunner.core.errors import PatternError
from eventrunner.core.reserved import Reserved, reserved_reason

TMP_PREFIX = ".er-tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup


class DataRoot:
    """The data root, for writes and checks that stay inside it and off the reserved paths."""

    def __init__(self, path: Path, reserved: Reserved = ()) -> None:
        self.path = path
        self.reserved = reserved

    def check(self, relpath: str) -> str:
        """The path relpath really names (symlinks resolved), relative to the root; PatternError
        when it leads outside the root or onto a reserved path. Folders not there yet are fine:
        `write` creates them inside."""
        folder, name = _split(relpath)
        try:
            fd, names, rest = self._open(folder, create=False)
        except FileNotFoundError:  # no data root yet: nothing in it can be a symlink
            return self._allowed([*folder, name], relpath)
        os.close(fd)
        return self._allowed([*names, *rest, name], relpath)

    def write(self, relpath: str, data: bytes) -> str:
        """Write `data` at relpath atomically (temp file, rename) inside the folder it checked;
        returns the canonical relpath written. PatternError as for `check`; OSError from disk."""
        folder, name = _split(relpath)
        fd, names, _ = self._open(folder, create=True)
        try:
            canonical = self._allowed([*names, name], relpath)
            tmp = f"{TMP_PREFIX}{uuid.uuid4().hex[:16]}"
            out = os.open(tmp, _NEW_FILE, 0o666, dir_fd=fd)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view) :]
                finally:
                    os.close(out)
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=fd)
                raise
            return canonical
        finally:
            os.close(fd)

    def _allowed(self, parts: list[str], relpath: str) -> str:
        if reason := reserved_reason(parts, self.reserved):
            raise PatternError(f"path {relpath!r} refused: {reason}")
        return "/".join(parts)

    def _open(self, folder: list[str], *, create: bool) -> tuple[int, list[str], list[str]]:
        """(fd of the folder, or of its deepest existing part when not creating; the canonical
        names walked; the names not there yet). Never follows a symlink out of the root."""
        try:
            root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            self.path.mkdir(parents=True, exist_ok=True)
            root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds, todo, links = [root], list(reversed(folder)), 0
        names: list[str] = []
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if not names:
                        raise PatternError(f"path {'/'.join(folder)!r} leads outside the data root")
                    names.pop()
                    os.close(fds.pop())
                    continue
                if reason := reserved_reason([*names, name], self.reserved):
                    raise PatternError(f"path {'/'.join(folder)!r} refused: {reason}")
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=fds[-1])
                except FileNotFoundError:
                    if not create:
                        rest = [name, *reversed(todo)]
                        if any(part in ("", ".", "..") for part in rest):
                            raise PatternError(
                                f"path {'/'.join(folder)!r} climbs out of a folder that does not exist"
                            ) from None
                        return fds.pop(), names, rest
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=fds[-1])
                    todo.append(name)  # opened (and checked) again: someone may have raced us
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    links += 1
                    if links > _MAX_LINKS:
                        raise PatternError(
                            f"path {'/'.join(folder)!r}: too many symlinks"
                        ) from None
                    target = self._link(fds[-1], name, folder)
                    if target is None:
                        todo.append(name)
                        continue
                    if target.startswith("/"):
                        for extra in fds[1:]:
                            os.close(extra)
                        del fds[1:]
                        names.clear()
                        target = self._below_root(target, folder)
                    todo.extend(reversed(target.split("/")))
                    continue
                fds.append(fd)
                names.append(name)
            return fds.pop(), names, []
        finally:
            for fd in fds:
                os.close(fd)

    def _link(self, dir_fd: int, name: str, folder: list[str]) -> str | None:
        """The target of the symlink `name`; None when it is no symlink any more (swapped back
        meanwhile: look again); NotADirectoryError when it is a file, an obstacle that may go
        away (unlike a path that leads out, which is refused for good)."""
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                return os.readlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # readlink on what just became a folder
                raise
            return None
        if stat.S_ISDIR(mode):
            return None
        raise NotADirectoryError(
            errno.ENOTDIR, f"path {'/'.join(folder)!r}: {name!r} is a file, not a folder"
        )

    def _below_root(self, target: str, folder: list[str]) -> str:
        """An absolute symlink target as a path relative to the root, if it points inside."""
        real = os.path.realpath(self.path)
        target = os.path.normpath(target)
        if target == real:
            return "."
        if not target.startswith(real.rstrip("/") + "/"):
            raise PatternError(
                f"path {'/'.join(folder)!r} leads outside the data root through a symlink"
            )
        return target[len(real.rstrip("/")) + 1 :]


def _split(relpath: str) -> tuple[list[str], str]:
    """(folder segments, file name) of a plain relative path; PatternError otherwise."""
    if "\x00" in relpath or "\\" in relpath:
        raise PatternError(f"path {relpath!r} contains a NUL or a backslash")
    if relpath.startswith("/") or os.path.isabs(relpath):
        raise PatternError(f"path {relpath!r} is absolute")
    parts = relpath.split("/")
    if ".." in parts:
        raise PatternError(f"path {relpath!r} climbs out with '..'")
    name = parts.pop()
    if name in ("", "."):
        raise PatternError(f"path {relpath!r} does not name a file")
    return parts, name


def resolve_inside(root: Path, relpath: str) -> Path:
    """root/relpath, refusing paths that are absolute, climb with "..", or escape via symlinks.

    A check only (realpath now); writers that take paths from outside use DataRoot.write.
    """
    if "\x00" in relpath or "\\" in relpath:
        raise PatternError(f"path {relpath!r} contains a NUL or a backslash")
    if relpath.startswith("/") or os.path.isabs(relpath):
        raise PatternError(f"path {relpath!r} is absolute")
    if ".." in relpath.split("/"):
        raise PatternError(f"path {relpath!r} climbs out with '..'")
    root_real = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root_real, relpath))
    if real == root_real:
        raise PatternError(f"path {relpath!r} names the root itself")
    if not (real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)):
        raise PatternError(f"path {relpath!r} resolves outside {str(root)!r} through a symlink")
    return root / relpath
