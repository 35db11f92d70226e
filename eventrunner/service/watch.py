"""File watching over the data root: settled file changes, or a Rescan when events may be lost."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Literal

from watchfiles import Change, awatch

from eventrunner.core.names import STATE_DIR
from eventrunner.core.patterns import is_temp_name

logger = logging.getLogger("eventrunner.watch")

ChangeKind = Literal["added", "modified", "deleted"]
_Sig = tuple[int, int]  # (size, mtime_ns)
_Probe = _Sig | Literal["missing", "dir", "other"]
# (change, relpath) as watchfiles reported it, ignored paths already dropped
_Raw = list[tuple[Change, str]]

_LIMIT_HINTS = ("no space left on device", "too many open files", "watch limit", "maxfileswatch")
_SLACK = 0.01  # wake this much after the earliest due time so neighbours settle in the same batch
_BACKOFF = (0.1, 5.0)  # restart delay after a watcher error: first, max
_QUEUE_SIZE = 64  # raw batches; beyond this watchfiles keeps (and dedups) changes itself


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
    return STATE_DIR in parts or is_temp_name(parts[-1])  # one rule, shared with pattern scans


async def watch_changes(
    root: Path,
    *,
    stop_event: asyncio.Event,
    debounce: float = 0.05,
    settle: float = 0.05,
    force_polling: bool | None = None,
    poll_delay: float = 0.3,
    ready: asyncio.Event | None = None,
    paths: Sequence[Path] | None = None,
    recursive: bool = True,
) -> AsyncIterator[list[FileChange] | Rescan]:
    """Yield batches of settled file changes under `root` until `stop_event` is set.

    `paths` (optional, inside `root`) narrows what is watched, e.g. to the source folders (the
    start-up walk and events then cost what they hold); `recursive=False`: not their subfolders.
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
    opts = _Options.of(real_root, debounce, force_polling, poll_delay, paths, recursive)
    producer = asyncio.create_task(_produce(opts, queue, halt, ready), name="eventrunner-watch")
    stopped = asyncio.create_task(stop_event.wait())
    getter: asyncio.Task[_Raw | Rescan] | None = None
    settler = _Settler(real_root, settle)
    try:
        while True:
            if getter is None:
                getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getter, stopped, producer},
                timeout=settler.wait_time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if stopped in done:
                return
            if producer in done:
                producer.result()  # re-raises whatever killed it; it never ends on its own
                return
            items: list[_Raw | Rescan] = []
            if getter in done:
                items, getter = [getter.result(), *_drain(queue)], None
            rescans, out = await _settle(settler, items)
            for rescan in rescans:  # reconciling covers all else in flight: order is moot
                yield rescan
            if out:
                yield [FileChange(kind, rel) for rel, kind in out.items()]
    finally:
        halt.set()
        for task in (getter, stopped, producer):
            if task is not None:
                task.cancel()
        # The watch thread checks `halt` every 50 ms, so the producer ends promptly.
        await asyncio.wait({producer})


def _drain(queue: asyncio.Queue[_Raw | Rescan]) -> list[_Raw | Rescan]:
    """What else is queued already: one batch for the settler instead of one per item."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _settle(
    settler: _Settler, items: list[_Raw | Rescan]
) -> tuple[list[Rescan], dict[str, ChangeKind]]:
    """The Rescans among `items`, and the changes that have settled (theirs and earlier ones)."""
    rescans: list[Rescan] = []
    out: dict[str, ChangeKind] = {}
    for item in items:
        if isinstance(item, Rescan):
            rescans.append(item)
        else:
            out.update(await settler.arrive(item))
    out.update(await settler.settle_due())
    return rescans, out


@dataclass(frozen=True)
class _Options:
    root: str
    debounce_ms: int
    force_polling: bool | None
    poll_delay_ms: int
    paths: tuple[str, ...]
    recursive: bool

    @classmethod
    def of(
        cls,
        root: str,
        debounce: float,
        force_polling: bool | None,
        poll_delay: float,
        paths: Sequence[Path] | None,
        recursive: bool = True,
    ) -> _Options:
        """From watch_changes' arguments (seconds) to awatch's (milliseconds, real paths)."""
        watched = tuple(os.path.realpath(p) for p in paths) if paths else (root,)
        ms = max(1, round(debounce * 1000))
        return cls(root, ms, force_polling, round(poll_delay * 1000), watched, recursive)


async def _produce(
    opts: _Options,
    queue: asyncio.Queue[_Raw | Rescan],
    halt: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    """Run awatch, restarting it after errors; owe the consumer a Rescan for every gap."""
    polling = opts.force_polling
    lost: str | None = None  # why a Rescan is owed once the next watcher is live
    ever_live, backoff = False, _BACKOFF[0]
    prefix = opts.root + os.sep
    cut = len(prefix)

    def keep(_change: Change, path: str) -> bool:
        return path.startswith(prefix) and not is_ignored(_rel(path, cut))

    while not halt.is_set():
        changes = _awatch(opts, keep, halt, polling)
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
                await queue.put([(change, _rel(path, cut)) for change, path in raw])
                raw = await anext(changes)
        except StopAsyncIteration:
            return  # halt was set
        except Exception as exc:  # cancellation is a BaseException and passes through
            polling = _after_error(opts, exc, polling, backoff)
            if ever_live:
                lost = f"file watcher restarted after an error: {exc}"
            with suppress(TimeoutError):
                await asyncio.wait_for(halt.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF[1])
        finally:
            if first is not None and not first.done():
                first.cancel()
                await asyncio.wait({first})
            await changes.aclose()


def _awatch(
    opts: _Options, keep: Callable[[Change, str], bool], halt: asyncio.Event, polling: bool | None
) -> AsyncGenerator[set[tuple[Change, str]], None]:
    return awatch(
        *opts.paths,
        watch_filter=keep,
        debounce=opts.debounce_ms,
        # watchfiles yields once nothing changed for `step` ms (default 50, on top of the
        # debounce): a short step keeps drop-to-event latency near the write itself.
        step=max(1, min(10, opts.debounce_ms)),
        stop_event=halt,
        force_polling=polling,
        poll_delay_ms=opts.poll_delay_ms,
        recursive=opts.recursive,
    )


def _after_error(
    opts: _Options, exc: Exception, polling: bool | None, backoff: float
) -> bool | None:
    """Log a watcher error; returns whether to poll from now on (a watch limit was hit)."""
    if _is_watch_limit(exc) and not polling:
        _warn_limit(opts, exc)
        return True
    logger.error("file watcher on %s failed, restarting in %.1fs: %s", opts.root, backoff, exc)
    return polling


def _rel(path: str, cut: int) -> str:
    return path[cut:].replace(os.sep, "/")


def _warn_limit(opts: _Options, exc: Exception) -> None:
    logger.warning(
        "INOTIFY LIMIT REACHED (fs.inotify.max_user_watches=%s, fs.inotify.max_user_instances=%s):"
        " falling back to polling %s every %dms, which is slower and costs CPU; raise the limit,"
        " e.g. `sysctl fs.inotify.max_user_watches=524288`. Cause: %s",
        _sysctl("max_user_watches"),
        _sysctl("max_user_instances"),
        opts.root,
        opts.poll_delay_ms,
        exc,
    )


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
    probe, so insertion order is due order and the loop needs a single timer.
    """

    def __init__(self, root: str, settle: float) -> None:
        self._root = root
        self._settle = settle
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def next_due(self) -> float | None:
        return next(iter(self._pending.values())).due if self._pending else None

    def wait_time(self) -> float | None:
        """Seconds until the earliest pending path is due to settle (None: nothing pending)."""
        due = self.next_due()
        return None if due is None else max(0.0, due - time.monotonic() + _SLACK)

    async def arrive(self, raw: _Raw) -> dict[str, ChangeKind]:
        """Probe freshly changed paths: deletions come back at once, files start settling."""
        added = {rel for change, rel in raw if change == Change.added}
        return await self._probe(list(dict.fromkeys(rel for _, rel in raw)), added, fresh=True)

    async def settle_due(self) -> dict[str, ChangeKind]:
        """Re-probe files whose settle time is up: report the still ones, re-arm the rest."""
        now = time.monotonic()
        rels = list(takewhile(lambda rel: self._pending[rel].due <= now, self._pending))
        return await self._probe(rels, set(), fresh=False) if rels else {}

    async def _probe(
        self, rels: list[str], added: set[str], *, fresh: bool
    ) -> dict[str, ChangeKind]:
        probes = await asyncio.to_thread(_probe_all, self._root, rels, added)
        now = time.monotonic()
        out: dict[str, ChangeKind] = {}
        for rel, probe, walked in probes:
            entry = self._pending.pop(rel, None)
            if probe == "missing":
                out[rel] = "deleted"
            elif not isinstance(probe, tuple):
                continue  # a directory or a special file: not reported
            elif not fresh and entry is not None and probe == entry.sig:
                out[rel] = "added" if entry.added else "modified"
            else:
                new = walked or rel in added or (entry is not None and entry.added)
                # Still since its mtime for `settle` already (written at once, renamed in): no
                # need to wait a whole settle period after the event as well.
                still_for = time.time() - probe[1] / 1e9
                if fresh and still_for >= self._settle:
                    out[rel] = "added" if new else "modified"
                    continue
                # (Re)arm; due times differ by at most `settle`, so insertion order stays close
                # enough to due order for the single timer.
                due = now + min(self._settle, max(self._settle - still_for, 0.0))
                self._pending[rel] = _Pending(new, probe, due)
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
