"""The stats of a look (fastpath.py): which recorded paths no longer have their recorded stats.

Imports nothing heavy: the no-change `run` calls it before anything else. In one thread a
stat costs ~4 µs here, and a thread beside a busy main thread gains nothing (os.stat gives up
the GIL for each syscall and waits to get it back: issue 15i). `serve`, which has imports to do
meanwhile, takes a large look's stats in worker processes instead (`Workers`): this file run
as a script, by a bare interpreter, each worker one contiguous part of the stamp's paths.
"""

from __future__ import annotations

import marshal
import os
import sys

# Not `typing`: a worker is a bare interpreter, where importing typing (and re with it) takes
# longer than starting it (~13 ms); mypy still reads these.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

ABSENT = (
    -1,
    -1,
    -1,
)  # the recorded stats of a path recorded as missing (a missing eventrunner.toml)

Ident = tuple[int, int, int]  # (size, mtime_ns, inode) of a file

# A worker's answer starts with one of these: CHANGED as soon as it finds a differing path
# (the caller can begin what a change needs while the stats go on), NONE at the end otherwise.
CHANGED, NONE = b"C", b"N"


def absolute(root: str, name: str) -> str:
    """A recorded path in full: `name` below `root` unless already absolute."""
    return name if not root or name.startswith("/") else root + name


def differing(paths: list[str], stats: Sequence[int]) -> list[str]:
    """The paths whose stats are not the recorded ones (gone ones too, unless recorded ABSENT),
    in recorded order. A racy path, recorded with mtime -1, never matches."""
    return [os.fsdecode(path) for path in _differing([os.fsencode(p) for p in paths], stats)]


def _differing(
    paths: list[bytes],
    stats: Sequence[int],
    root: bytes = b"",
    first: Callable[[], None] | None = None,
) -> list[bytes]:
    """differing() over bytes paths (relative ones below `root`), each stat relative to its
    folder's descriptor: a quarter less CPU than a stat of the whole str path (no encoding,
    one lookup, not one per part). Returns them as given; `first` is called at the first."""
    st = os.stat
    out = []
    triples = iter(stats)  # (size, mtime_ns, inode) per path, no indexing
    folder, fd = b"", -1
    try:
        for path, size, mtime_ns, ino in zip(paths, triples, triples, triples, strict=True):
            parent, _, name = path.rpartition(b"/")
            if parent != folder:
                folder = parent
                if fd >= 0:
                    os.close(fd)
                where = parent if path.startswith(b"/") else root + parent
                try:
                    fd = os.open(where or b"/", os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    fd = -1  # gone or not a folder: stat the whole path (and find it gone)
            try:
                if fd >= 0 and name:
                    s = st(name, dir_fd=fd)
                else:
                    s = st(path if path.startswith(b"/") else root + path)
            except OSError:
                if (size, mtime_ns, ino) != ABSENT:
                    out.append(path)
                    if first is not None and len(out) == 1:
                        first()
                continue
            if s.st_mtime_ns != mtime_ns or s.st_size != size or s.st_ino != ino:
                out.append(path)
                if first is not None and len(out) == 1:
                    first()
    finally:
        if fd >= 0:
            os.close(fd)
    return out


def changed_in(
    names: str,
    raw: bytes,
    k: int = 0,
    n: int = 1,
    root: str = "",
    first: Callable[[], None] | None = None,
) -> list[str]:
    """differing() over part `k` of `n` of packed (NUL-joined names, int64 stats), relative
    names below `root`: the paths in full (`first`: called when the first is found)."""
    paths, stats = part(names, raw, k, n)
    found = _differing(paths, stats, os.fsencode(root), first)
    return [absolute(root, os.fsdecode(path)) for path in found]


def part(names: str, raw: bytes, k: int, n: int) -> tuple[list[bytes], Sequence[int]]:
    """Part `k` of `n` of packed (NUL-joined names, int64 stats), as bytes paths: contiguous,
    cut between names, in recorded order; the parts together are every path once. The stats
    are a view of `raw` (no copy, and no `array` module to load in a worker)."""
    starts = [0, *(_next_name(names, len(names) * i // n) for i in range(1, n)), len(names) + 1]
    begin, end = starts[k], starts[k + 1]
    if not names or begin >= end:
        return [], ()
    first = names.count("\0", 0, begin)  # names before this part
    paths = os.fsencode(names[begin : end - 1]).split(b"\0")
    return paths, memoryview(raw)[first * 24 : (first + len(paths)) * 24].cast("q")


def _next_name(names: str, at: int) -> int:
    """Where the first name starting at or after `at` begins (len + 1: none)."""
    if at == 0:
        return 0
    cut = names.find("\0", at - 1)
    return len(names) + 1 if cut < 0 else cut + 1


def file_ident(fd: int) -> Ident:
    st = os.fstat(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class LookFailed(Exception):
    """Raised when a worker of the look failed: its exit status and the end of its stderr."""


class Workers:
    """The stats of `stamp[key]`'s paths, taken by `n` worker processes started at once.

    `result()` waits for them and returns (the stamp file's ident as they read it, the paths
    whose stats differ, in recorded order); `cancel()` kills and reaps them. Either way no
    worker outlives the call."""

    def __init__(self, stamp: str, key: str, n: int) -> None:
        import subprocess  # here: a small look starts no worker

        cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), stamp, key, str(n)]
        self._procs: list[subprocess.Popen[bytes]] = []
        self._heads: dict[int, bytes] = {}  # pid -> the first byte any_changed() read
        try:
            for k in range(n):
                self._procs.append(
                    subprocess.Popen(
                        [*cmd, str(k)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                )
        except BaseException:
            self.cancel()
            raise

    def result(self) -> tuple[Ident | None, list[str]]:
        try:
            idents: set[Ident] = set()
            changed: list[str] = []
            for proc in list(self._procs):
                out, err = proc.communicate()
                out = self._heads.get(proc.pid, b"") + out  # what any_changed() read of it
                if proc.returncode != 0:
                    tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                    raise LookFailed(f"exit status {proc.returncode}: {tail[0]}")
                ident, paths = _decode(out)
                idents.add(ident)
                changed += paths
            # Every worker read the same stamp (it is written only under the lock we hold).
            return (idents.pop() if len(idents) == 1 else None), changed
        finally:
            self.cancel()

    def done(self) -> bool:
        """True once every worker has exited (result() will not wait)."""
        return all(proc.poll() is not None for proc in self._procs)

    def any_changed(self) -> bool:
        """Wait until a worker has found a changed path (True) or all have found none (False);
        True too when one ended without saying (result() tells why). Idle meanwhile: the
        workers have the cores to themselves."""
        import select

        waiting = {proc.stdout.fileno(): proc for proc in self._procs if proc.stdout is not None}
        while waiting:
            ready, _, _ = select.select(list(waiting), [], [])
            for fd in ready:
                head = os.read(fd, 1)  # before communicate() reads the rest through the pipe
                self._heads[waiting.pop(fd).pid] = head
                if head != NONE:
                    return True
        return False

    def cancel(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _decode(out: bytes) -> tuple[Ident, list[str]]:
    """A worker's whole answer: CHANGED or NONE, then the marshal of its findings."""
    if out[:1] not in (CHANGED, NONE):
        raise LookFailed(f"unreadable answer ({len(out)} bytes): no status byte")
    try:
        ident, paths = marshal.loads(out[1:])
        return (ident[0], ident[1], ident[2]), list(paths)
    except (EOFError, ValueError, TypeError) as exc:
        raise LookFailed(f"unreadable answer ({len(out)} bytes): {exc}") from None


def _work(argv: list[str]) -> None:
    """A worker: stamp path, key, n, k -> marshal of (the stamp's ident, differing paths)."""
    # signal's C half: the module itself builds its enums (enum, functools: ~5 ms here).
    import _signal

    # A Ctrl-C at the terminal reaches the whole process group: serve stops cleanly on it,
    # and its look is to end with its own stop, not fail under it (SIGTERM still ends it).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    stamp, key, n, k = argv[0], argv[1], int(argv[2]), int(argv[3])
    with open(stamp, "rb") as fh:
        ident = file_ident(fh.fileno())
        data: dict[str, Any] = marshal.load(fh)
    names, raw = data[key]
    out = sys.stdout.buffer

    def tell() -> None:
        out.write(CHANGED)
        out.flush()

    found = changed_in(names, raw, k, n, data.get("root", ""), first=tell)
    if not found:
        out.write(NONE)
    out.write(marshal.dumps((ident, found)))


if __name__ == "__main__":
    _work(sys.argv[1:])
