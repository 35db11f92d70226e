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
            tmp = f"{TMP_PREFIX}{os.urandom(8).hex()}"  # not uuid: it imports platform
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
        walk = _Walk(root, folder)
        try:
            while walk.todo:
                name = walk.todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    walk.up()
                    continue
                if reason := reserved_reason([*walk.names, name], self.reserved):
                    raise PatternError(f"path {walk.shown!r} refused: {reason}")
                try:
                    walk.enter(name, os.open(name, _DIR_FLAGS, dir_fd=walk.fd))
                except FileNotFoundError:
                    if not create:
                        return walk.stop(name)
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=walk.fd)
                    walk.todo.append(name)  # opened (and checked) again: someone may race us
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    self._follow(walk, name)
            return walk.stop(None)
        finally:
            walk.close()

    def _follow(self, walk: _Walk, name: str) -> None:
        """`name` is not a plain folder: walk on along its symlink target, or look again."""
        walk.links += 1
        if walk.links > _MAX_LINKS:
            raise PatternError(f"path {walk.shown!r}: too many symlinks")
        target = self._link(walk.fd, name, walk.folder)
        if target is None:
            walk.todo.append(name)
            return
        if target.startswith("/"):
            walk.restart()
            target = self._below_root(target, walk.folder)
        walk.todo.extend(reversed(target.split("/")))

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


class _Walk:
    """One walk down from the root: the open folder descriptors and the canonical names."""

    def __init__(self, root: int, folder: list[str]) -> None:
        self.folder, self.shown = folder, "/".join(folder)
        self.fds, self.names = [root], list[str]()
        self.todo, self.links = list(reversed(folder)), 0

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def enter(self, name: str, fd: int) -> None:
        self.fds.append(fd)
        self.names.append(name)

    def up(self) -> None:
        if not self.names:
            raise PatternError(f"path {self.shown!r} leads outside the data root")
        self.names.pop()
        os.close(self.fds.pop())

    def restart(self) -> None:
        """Back to the root (an absolute symlink target)."""
        for fd in self.fds[1:]:
            os.close(fd)
        del self.fds[1:]
        self.names.clear()

    def stop(self, missing: str | None) -> tuple[int, list[str], list[str]]:
        """Hand over the deepest fd (the caller closes it), the names, what does not exist."""
        rest = [] if missing is None else [missing, *reversed(self.todo)]
        if any(part in ("", ".", "..") for part in rest):
            raise PatternError(f"path {self.shown!r} climbs out of a folder that does not exist")
        return self.fds.pop(), self.names, rest

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


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
