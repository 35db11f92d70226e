"""File watching over the data root: settled file changes, or a Rescan when events may be lost."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchfiles import Change, awatch

logger = logging.getLogger("eventrunner.watch")

ChangeKind = Literal["added", "modified", "deleted"]
_Sig = tuple[int, int]  # (size, mtime_ns)
_Probe = _Sig | Literal["missing", "dir", "other"]
_Raw = list[
    tuple[Change, str]
]  # (change, relpath) as watchfiles reported it, ignored paths dropped

_TEMP_PREFIXES = (".er-tmp-", ".#")
_TEMP_SUFFIXES = (".tmp", ".swp", ".swx", "~", ".part", ".crdownload")
_LIMIT_HINTS = ("no space left on device", "too many open files", "watch limit", "maxfileswatch")
_SLACK = 0.01  # wake this much after the earliest due time so neighbours settle in the same batch
_BACKOFF = (0.1, 5.0)  # restart delay after a watcher error: first, max
_QUEUE_SIZE = 64  # raw batches; beyond this watchfiles keeps (and dedups) changes itself
_IDLE_MS = 1_000  # awatch yields an empty set this often when idle (proves the watcher alive)


@dataclass(frozen=True)
class FileChange:
    """One file under the root was added, modified (and has settled) or deleted."""

    kind: ChangeKind
    relpath: str  # relative to root, "/" separators


@dataclass(frozen=True)
class Rescan:
    """The watcher lost events (error, overflow, restart): the consumer should reconcile."""

    reason: str


def is_ignored(relpath: str) -> bool:
    """True for eventrunner's own state and for temp/editor/partial files, judged by basename."""
    parts = relpath.split("/")
    if ".eventrunner" in parts:
        return True
    name = parts[-1]
    return (
        name.startswith(_TEMP_PREFIXES)
        or name.endswith(_TEMP_SUFFIXES)
        or (len(name) > 1 and name[0] == "#" and name[-1] == "#")
        or name == "4913"  # vim probes directory writability with this name
    )


async def watch_changes(
    root: Path,
    *,
    stop_event: asyncio.Event,
    debounce: float = 0.05,
    settle: float = 0.2,
    force_polling: bool | None = None,
    poll_delay: float = 0.3,
    ready: asyncio.Event | None = None,
) -> AsyncIterator[list[FileChange] | Rescan]:
    """Yield batches of settled file changes under `root` until `stop_event` is set.

    A file is reported once its (size, mtime_ns) has been still for `settle` seconds; deletions at
    once. `ready` (optional) is set when the watcher is live: reconcile after that to miss nothing.
    A vanished path is reported as deleted even if it was a directory moved away (its files get
    no events of their own); a directory moved in is walked and its files reported as added.
    Changes still settling when `stop_event` is set are dropped.
    """
    real_root = os.path.realpath(root)
    queue: asyncio.Queue[_Raw | Rescan] = asyncio.Queue(maxsize=_QUEUE_SIZE)
    # awatch sets its stop event when cancelled: never hand it the caller's.
    halt = asyncio.Event()
    opts = _Options(
        real_root, max(1, round(debounce * 1000)), force_polling, round(poll_delay * 1000)
    )
    producer = asyncio.create_task(_produce(opts, queue, halt, ready), name="eventrunner-watch")
    stopped = asyncio.create_task(stop_event.wait())
    getter: asyncio.Task[_Raw | Rescan] | None = None
    settler = _Settler(real_root, settle)
    try:
        while True:
            if getter is None:
                getter = asyncio.create_task(queue.get())
            due = settler.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic() + _SLACK)
            done, _ = await asyncio.wait(
                {getter, stopped, producer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if stopped in done:
                return
            if producer in done:
                producer.result()  # re-raises whatever killed it; it never ends on its own
                return
            items: list[_Raw | Rescan] = []
            if getter in done:
                items.append(getter.result())
                getter = None
                while not queue.empty():
                    items.append(queue.get_nowait())
            out: dict[str, ChangeKind] = {}
            for item in items:
                if isinstance(item, Rescan):
                    if out:
                        yield _batch(out)
                        out = {}
                    yield item
                else:
                    out.update(await settler.arrive(item))
            out.update(await settler.settle_due())
            if out:
                yield _batch(out)
    finally:
        halt.set()
        for task in (getter, stopped, producer):
            if task is not None:
                task.cancel()
        # The watch thread checks `halt` every 50 ms, so the producer ends promptly.
        await asyncio.wait({producer})


def _batch(out: dict[str, ChangeKind]) -> list[FileChange]:
    return [FileChange(kind, rel) for rel, kind in out.items()]


@dataclass(frozen=True)
class _Options:
    root: str
    debounce_ms: int
    force_polling: bool | None
    poll_delay_ms: int


async def _produce(
    opts: _Options,
    queue: asyncio.Queue[_Raw | Rescan],
    halt: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    """Run awatch, restarting it after errors; owe the consumer a Rescan for every gap."""
    polling = opts.force_polling
    ever_live = False
    lost: str | None = None  # why a Rescan is owed once the next watcher is live
    backoff = _BACKOFF[0]
    prefix = opts.root + os.sep

    def keep(_change: Change, path: str) -> bool:
        return path.startswith(prefix) and not is_ignored(path[len(prefix) :].replace(os.sep, "/"))

    while not halt.is_set():
        changes = awatch(
            opts.root,
            watch_filter=keep,
            debounce=opts.debounce_ms,
            stop_event=halt,
            rust_timeout=_IDLE_MS,
            yield_on_timeout=True,
            force_polling=polling,
            poll_delay_ms=opts.poll_delay_ms,
        )
        first: asyncio.Future[set[tuple[Change, str]]] | None = None
        try:
            first = asyncio.ensure_future(anext(changes))
            # awatch builds its RustNotify (adding every inotify watch) synchronously in its first
            # step, so after one pass of the loop the watcher is live unless that step failed.
            await asyncio.sleep(0)
            if not first.done():
                ever_live, backoff = True, _BACKOFF[0]
                if ready is not None:
                    ready.set()
                if lost is not None:
                    await queue.put(Rescan(lost))
                    lost = None
            raw = await first
            while True:
                if raw:
                    await queue.put([(c, p[len(prefix) :].replace(os.sep, "/")) for c, p in raw])
                raw = await anext(changes)
        except StopAsyncIteration:
            return  # halt was set
        except Exception as exc:  # cancellation is a BaseException and passes through
            if _is_watch_limit(exc) and not polling:
                polling = True
                logger.warning(
                    "INOTIFY LIMIT REACHED (fs.inotify.max_user_watches=%s, "
                    "fs.inotify.max_user_instances=%s): falling back to polling %s every %dms, "
                    "which is slower and costs CPU; raise the limit, e.g. "
                    "`sysctl fs.inotify.max_user_watches=524288`. Cause: %s",
                    _sysctl("max_user_watches"),
                    _sysctl("max_user_instances"),
                    opts.root,
                    opts.poll_delay_ms,
                    exc,
                )
            else:
                logger.error(
                    "file watcher on %s failed, restarting in %.1fs: %s", opts.root, backoff, exc
                )
            if ever_live:
                lost = f"file watcher restarted after an error: {exc}"
            try:
                await asyncio.wait_for(halt.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, _BACKOFF[1])
        finally:
            if first is not None and not first.done():
                first.cancel()
                await asyncio.wait({first})
            await changes.aclose()


def _is_watch_limit(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE):
        return True
    text = str(exc).lower()
    return any(hint in text for hint in _LIMIT_HINTS)


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys/fs/inotify", name).read_text().strip()
    except OSError:
        return "?"


@dataclass
class _Pending:
    added: bool
    sig: _Sig
    due: float


class _Settler:
    """Holds changed files until their (size, mtime_ns) stands still for `settle` seconds.

    One ordered dict instead of a timer per file: every entry is due `settle` after its last
    probe, so insertion order (with move-to-end on every re-probe) is due order.
    """

    def __init__(self, root: str, settle: float) -> None:
        self._root = root
        self._settle = settle
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def next_due(self) -> float | None:
        for entry in self._pending.values():
            return entry.due
        return None

    async def arrive(self, raw: _Raw) -> dict[str, ChangeKind]:
        """Probe freshly changed paths: deletions come back at once, files start settling."""
        added = {rel for change, rel in raw if change == Change.added}
        rels = list(dict.fromkeys(rel for _, rel in raw))
        probes = await asyncio.to_thread(_probe_all, self._root, rels, added)
        now = time.monotonic()
        out: dict[str, ChangeKind] = {}
        for rel, probe, new in probes:
            if probe == "missing":
                self._pending.pop(rel, None)
                out[rel] = "deleted"
            elif isinstance(probe, tuple):
                old = self._pending.pop(rel, None)
                is_new = new or rel in added or (old is not None and old.added)
                self._pending[rel] = _Pending(is_new, probe, now + self._settle)
                out.pop(rel, None)
        return out

    async def settle_due(self) -> dict[str, ChangeKind]:
        """Re-probe files whose settle time is up: report the still ones, re-arm the rest."""
        now = time.monotonic()
        rels: list[str] = []
        for rel, waiting in self._pending.items():
            if waiting.due > now:
                break
            rels.append(rel)
        if not rels:
            return {}
        probes = await asyncio.to_thread(_probe_all, self._root, rels, set())
        now = time.monotonic()
        out: dict[str, ChangeKind] = {}
        for rel, probe, _ in probes:
            entry = self._pending.get(rel)
            if entry is None:
                continue
            if probe == "missing":
                del self._pending[rel]
                out[rel] = "deleted"
            elif probe == entry.sig:
                del self._pending[rel]
                out[rel] = "added" if entry.added else "modified"
            elif isinstance(probe, tuple):
                entry.sig, entry.due = probe, now + self._settle
                self._pending.move_to_end(rel)
            else:
                del self._pending[rel]  # became a directory or a special file: not ours
        return out


def _probe_all(root: str, rels: list[str], expand: set[str]) -> list[tuple[str, _Probe, bool]]:
    """Stat each path (runs in a worker thread); directories in `expand` are walked for files."""
    out: list[tuple[str, _Probe, bool]] = []
    for rel in rels:
        probe = _probe(os.path.join(root, rel))
        out.append((rel, probe, False))
        if probe == "dir" and rel in expand:
            # A directory moved in brings files that get no events of their own; a new one may
            # have been filled before its inotify watch was added.
            out.extend(
                (sub, _probe(os.path.join(root, sub)), True) for sub in _files_under(root, rel)
            )
    return out


def _probe(path: str) -> _Probe:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:
        return "other"  # unreadable (permissions, loops): nothing we could process anyway
    if stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns)
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def _files_under(root: str, rel: str) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, rel)):
        dirnames[:] = [d for d in dirnames if d != ".eventrunner"]
        base = os.path.relpath(dirpath, root).replace(os.sep, "/")
        found.extend(f"{base}/{name}" for name in filenames if not is_ignored(f"{base}/{name}"))
    return found
