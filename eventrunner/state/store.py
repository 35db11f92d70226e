"""State on disk: atomic writes, manifests, failure records, holds and invalidations, the lock."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import itertools
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import xxhash

from eventrunner.core.errors import LockHeld

TMP_PREFIX = ".er-tmp-"


def dumps(value: Any) -> bytes:
    """Sorted-key, indented JSON so state files diff well."""
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


_PROCESS_TAG = secrets.token_hex(3)
_counter = itertools.count()


def temp_path(final: Path) -> Path:
    """A temp name beside `final` (same folder, so rename is atomic); the watcher ignores it."""
    return final.with_name(f"{TMP_PREFIX}{_PROCESS_TAG}{next(_counter):x}-{final.name}"[:255])


_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def write_file(path: Path | str, data: bytes) -> None:
    """Write bytes to a (temp) file with plain os calls: no buffered-file object, no isatty or
    seek probes (per execution on the hot path: each syscall is also a GIL hand-off)."""
    fd = os.open(path, _WRITE_FLAGS, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
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


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding `path`: one call durably commits a batch."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
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


_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_intern = sys.intern


class Manifest:
    """What produced a state: code, params, every input's hash, every output's hash, timings.

    Held for every state in memory (200,000 at 100,000 entities x 2 stages), so stored compactly:
    slots, tuples instead of nested dicts, interned paths and hashes (an output's hash is the
    next stage's input hash), values derived from the entity id. `inputs`, `outputs` and
    `values` are built on access.
    """

    __slots__ = (
        "_io",
        "_names",
        "_nin",
        "attempt",
        "code",
        "dropped",
        "duration_s",
        "entity",
        "finished_ns",
        "params",
        "stage",
        "started",
    )

    def __init__(
        self,
        stage: str,
        entity: str,
        values: Mapping[str, str],
        code: str,
        params: str,
        inputs: Mapping[str, Mapping[str, str]],
        outputs: Mapping[str, str],
        started: float,
        finished_ns: int,
        duration_s: float,
        attempt: int = 1,
        dropped: list[str] | None = None,
    ) -> None:
        self.stage = _intern(stage)
        self.entity = _intern(entity)  # shared by the states of every stage of this entity
        names = tuple(_intern(n) for n in values)
        self._names = _NAMES.setdefault(names, names)
        self.code = _intern(code)
        self.params = _intern(params)
        # One flat tuple: (name, path, hash) per input file, then (path, hash) per output.
        io = [
            _intern(x) for n, files in inputs.items() for p, h in files.items() for x in (n, p, h)
        ]
        self._nin = len(io)
        io.extend(_intern(x) for p, h in outputs.items() for x in (p, h))
        self._io = tuple(io)
        self.started = started
        self.finished_ns = finished_ns
        self.duration_s = duration_s
        self.attempt = attempt
        # Fan-out outputs no longer produced (prune deletes them); almost always the shared ().
        self.dropped: tuple[str, ...] = tuple(dropped) if dropped else ()

    @property
    def values(self) -> dict[str, str]:
        """The entity's variables (from the entity id)."""
        from eventrunner.core.patterns import parse_entity_id

        return parse_entity_id(self._names, self.entity)

    @property
    def inputs(self) -> dict[str, dict[str, str]]:
        """input name -> {relpath: hash}."""
        out: dict[str, dict[str, str]] = {}
        flat = self._io
        for i in range(0, self._nin, 3):
            out.setdefault(flat[i], {})[flat[i + 1]] = flat[i + 2]
        return out

    @property
    def output_paths(self) -> tuple[str, ...]:
        """The relpaths of the outputs (no dict built)."""
        return self._io[self._nin :: 2]

    @property
    def outputs(self) -> dict[str, str]:
        """relpath -> hash."""
        flat, n = self._io, self._nin
        return dict(zip(flat[n::2], flat[n + 1 :: 2], strict=True))

    def to_json(self) -> dict[str, Any]:
        """Plain data for the manifest file."""
        return {
            "stage": self.stage,
            "entity": self.entity,
            "values": self.values,
            "code": self.code,
            "params": self.params,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "started": self.started,
            "finished_ns": self.finished_ns,
            "duration_s": self.duration_s,
            "attempt": self.attempt,
            "dropped": list(self.dropped),
        }

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Positional compact state: pickling the index cache stays fast and small.
        return (
            _manifest_from_state,
            (
                self.stage,
                self.entity,
                self._names,
                self.code,
                self.params,
                self._io,
                self._nin,
                self.started,
                self.finished_ns,
                self.duration_s,
                self.attempt,
                self.dropped,
            ),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __repr__(self) -> str:
        return f"Manifest({self.stage!r}, {self.entity!r}, outputs={self.outputs!r})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest file's data; KeyError/TypeError on a damaged file."""
        return cls(
            data["stage"],
            data["entity"],
            data["values"],
            data["code"],
            data["params"],
            data["inputs"],
            data["outputs"],
            data["started"],
            data["finished_ns"],
            data["duration_s"],
            data.get("attempt", 1),
            data.get("dropped", []),
        )


def _manifest_from_state(
    stage: str,
    entity: str,
    names: tuple[str, ...],
    code: str,
    params: str,
    io: tuple[str, ...],
    nin: int,
    started: float,
    finished_ns: int,
    duration_s: float,
    attempt: int,
    dropped: tuple[str, ...],
) -> Manifest:
    """Rebuild a manifest from its compact state (unpickling the index cache)."""
    # Strings shared when the cache was written (interned) come back shared: pickle's memo
    # keeps identity within one file. The entity id is interned again so that the index's
    # pattern instances (which intern theirs) share it too.
    m = Manifest.__new__(Manifest)
    m.stage, m.entity, m.code, m.params = stage, _intern(entity), code, params
    m._names, m._io, m._nin = names, io, nin
    m.started, m.finished_ns, m.duration_s, m.attempt, m.dropped = (
        started,
        finished_ns,
        duration_s,
        attempt,
        dropped,
    )
    return m


@dataclass
class Failure:
    """A failed state: attempts so far, last error, when to retry, dead after max attempts."""

    stage: str
    entity: str
    key: str  # hash of code, params and inputs of the failed attempts: a change starts afresh
    attempts: int
    error: str
    traceback: str
    first_failed: float
    last_failed: float
    next_retry: float | None
    dead: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain data for the failure file."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failure:
        """Parse a failure file's data."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Control:
    """Manual holds and invalidations. "*" means every entity of the stage."""

    holds: dict[str, list[str]] = field(default_factory=dict)
    invalidations: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # stage -> {eid|"*": time_ns}

    def held(self, stage: str, eid: str) -> bool:
        """True when the state is on manual hold."""
        h = self.holds.get(stage)
        return bool(h) and ("*" in h or eid in h)  # type: ignore[operator]

    def invalidated_at(self, stage: str, eid: str) -> int:
        """Latest invalidation time (ns) that applies to this state, 0 if none."""
        inv = self.invalidations.get(stage)
        if not inv:
            return 0
        return max(inv.get("*", 0), inv.get(eid, 0))


def _fname(eid: str) -> str:
    """File name for an entity id: readable, reversible, short enough for any filesystem."""
    name = quote(eid, safe="=,-_.@+")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 200:
        name = "~" + xxhash.xxh3_128_hexdigest(eid.encode())
    return name + ".json"


class Store:
    """The `.eventrunner/` folder of a workspace."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.manifests = state_dir / "state"
        self.failures = state_dir / "failures"
        self.control_path = state_dir / "control.json"
        self.lock_path = state_dir / "lock"
        self._lock_fd: int | None = None
        self.crashed_before = False  # set by acquire_lock

    def ensure(self) -> None:
        """Create the folder layout."""
        for d in (self.manifests, self.failures):
            d.mkdir(parents=True, exist_ok=True)

    def manifest_path(self, stage: str, eid: str) -> Path:
        """Where the manifest of (stage, entity) lives."""
        return self.manifests / stage / _fname(eid)

    def failure_path(self, stage: str, eid: str) -> Path:
        """Where the failure record of (stage, entity) lives."""
        return self.failures / stage / _fname(eid)

    def read_manifest(self, stage: str, eid: str) -> Manifest | None:
        """The manifest, or None when absent or damaged (a damaged one means stale)."""
        found: Manifest | None = _read(self.manifest_path(stage, eid), Manifest)
        return found

    def iter_manifests(self) -> Iterator[Manifest]:
        """Every readable manifest (used to rebuild the index)."""
        yield from _iter(self.manifests, Manifest)

    def iter_failures(self) -> Iterator[Failure]:
        """Every readable failure record."""
        yield from _iter(self.failures, Failure)

    def write_failure(self, failure: Failure) -> None:
        """Record a failure durably."""
        atomic_write(self.failure_path(failure.stage, failure.entity), dumps(failure.to_json()))

    def delete_failure(self, stage: str, eid: str) -> None:
        """Forget a failure (after success or a manual retry)."""
        self.failure_path(stage, eid).unlink(missing_ok=True)

    def delete_manifest(self, stage: str, eid: str) -> None:
        """Forget a state (prune)."""
        self.manifest_path(stage, eid).unlink(missing_ok=True)

    def read_control(self) -> Control:
        """Holds and invalidations."""
        try:
            data = json.loads(self.control_path.read_bytes())
            return Control(holds=data.get("holds", {}), invalidations=data.get("invalidations", {}))
        except (FileNotFoundError, ValueError):
            return Control()

    def write_control(self, control: Control) -> None:
        """Persist holds and invalidations durably."""
        atomic_write(self.control_path, dumps(asdict(control)))

    # -- the workspace lock ---------------------------------------------------------------
    def acquire_lock(self, purpose: str) -> None:
        """Take the one-writer lock; LockHeld names the holder when another process has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(
                f"workspace is locked by {self.lock_holder() or 'another process'}"
            ) from None
        # A holder that exits cleanly empties the file; content left means it crashed (or was
        # killed), so its temp files may litter the workspace.
        self.crashed_before = bool(os.pread(fd, 1, 0))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, dumps(info), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        """Release the lock; safe to call twice."""
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def lock_holder(self) -> str | None:
        """Who holds the lock, as text ("eventrunner serve, pid 123 on host")."""
        try:
            info = json.loads(self.lock_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return (
            f"eventrunner {info.get('purpose', '?')} (pid {info.get('pid')} on {info.get('host')})"
        )


def _read(path: Path, cls: Any) -> Any:
    try:
        return cls.from_json(json.loads(path.read_bytes()))  # a Manifest or a Failure
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, KeyError, TypeError):
        return None


def _iter(root: Path, cls: Any) -> Iterator[Any]:
    if not root.is_dir():
        return
    for pipeline_stage in os.scandir(root):
        if not pipeline_stage.is_dir():
            continue
        for entry in os.scandir(pipeline_stage.path):
            if entry.name.endswith(".json") and not entry.name.startswith(TMP_PREFIX):
                item = _read(Path(entry.path), cls)
                if item is not None:
                    yield item


def entity_from_fname(name: str) -> str:
    """Inverse of the manifest file name (for names that were not hashed)."""
    return unquote(name.removesuffix(".json"))
