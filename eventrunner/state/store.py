"""State on disk: the only writer of manifests, failure records and control; the lock.

Every record file goes through one pair, `_write_record` / `_delete_record` (as Snakemake's
PersistenceBase does), either durably at once or staged for a group commit (`stage`, then the
caller's barrier, then `install`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import xxhash

from eventrunner.core.names import TMP_PREFIX
from eventrunner.core.records import AttemptOutput, Control, Failure, Manifest
from eventrunner.state.attempts import AttemptLog
from eventrunner.state.files import atomic_write, dumps, temp_name, write_file
from eventrunner.state.lock import WorkspaceLock
from eventrunner.state.members import remove_logs, write_logs

# An id of only these characters is its own quoted form (quote() leaves them as they are).
_PLAIN = re.compile(r"[A-Za-z0-9_.~=,@+-]+").fullmatch


def _fname(eid: str) -> str:
    """File name for an entity id: readable, reversible, short enough for any filesystem."""
    name = eid if _PLAIN(eid) else quote(eid, safe="=,-_.@+")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 200:
        name = "~" + xxhash.xxh3_128_hexdigest(eid.encode())
    return name + ".json"


Staged = tuple[str, str]  # (temp written, final place) of a record in a group commit
Record = Manifest | Failure | AttemptOutput  # what a group commit stages


class Store:
    """The `.eventrunner/` folder of a workspace."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.manifests = state_dir / "state"
        self.failures = state_dir / "failures"
        self.outputs = state_dir / "output"  # what attempts printed (only those that did)
        self.control_path = state_dir / "control.json"
        self.lock_path = state_dir / "lock"
        self.attempts = AttemptLog(state_dir / "attempts.log")
        self._lock = WorkspaceLock(self.lock_path)
        self._dirs: set[str] = set()  # record folders known to exist
        self._manifests = os.fspath(self.manifests)
        self._failures = os.fspath(self.failures)
        self._outputs = os.fspath(self.outputs)

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

    def output_path(self, stage: str, eid: str) -> Path:
        """Where the captured output of (stage, entity)'s last printing attempt lives."""
        return self.outputs / stage / _fname(eid)

    # -- reading ------------------------------------------------------------------------------
    def read_manifest(self, stage: str, eid: str) -> Manifest | None:
        """The manifest, or None when absent or damaged (a damaged one means stale)."""
        found: Manifest | None = _read(self.manifest_path(stage, eid), Manifest)
        return found

    def read_failure(self, stage: str, eid: str) -> Failure | None:
        """The failure record, or None when absent or damaged."""
        found: Failure | None = _read(self.failure_path(stage, eid), Failure)
        return found

    def read_output(self, stage: str, eid: str) -> AttemptOutput | None:
        """The last captured output of the state (check `belongs_to`), or None."""
        found: AttemptOutput | None = _read(self.output_path(stage, eid), AttemptOutput)
        return found

    def iter_manifests(self) -> Iterator[Manifest]:
        """Every readable manifest (used to rebuild the index)."""
        yield from _iter(self.manifests, Manifest)

    def iter_failures(self) -> Iterator[Failure]:
        """Every readable failure record."""
        yield from _iter(self.failures, Failure)

    def read_control(self) -> Control:
        """Holds and invalidations."""
        try:
            return Control.from_json(json.loads(self.control_path.read_bytes()))
        except (FileNotFoundError, ValueError, AttributeError):
            return Control()

    # -- writing: one pair for every record file ------------------------------------------------
    def _write_record(
        self, path: Path | str, data: bytes, staged: list[Staged] | None = None
    ) -> None:
        """The one writer of record files. Alone: durable now (temp, fsync, rename, fsync the
        folder). Given `staged` (a group commit): only the temp is written beside `path` and
        listed there; the caller's barrier makes it durable and `install` puts it in place.
        (Plain strings from here on: a group commit stages a record per execution.)"""
        if staged is None:
            atomic_write(Path(path), data)
            return
        folder, name = os.path.split(path)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        tmp = os.path.join(folder, temp_name(name))
        final = os.path.join(folder, name)
        try:
            write_file(tmp, data)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        staged.append((tmp, final))

    def _delete_record(self, path: Path) -> None:
        """The one deleter of record files."""
        path.unlink(missing_ok=True)

    def _path_of(self, record: Record) -> str:
        """Where a record lives, as a plain string (a group commit stages one per execution)."""
        if isinstance(record, Manifest):
            base = self._manifests
        elif isinstance(record, AttemptOutput):
            base = self._outputs
        else:
            base = self._failures
        return f"{base}/{record.stage}/{_fname(record.entity)}"

    def write_manifest(self, manifest: Manifest) -> None:
        """Replace a manifest durably (prune's rewrite; runs commit theirs through `stage`)."""
        self._write_record(self._path_of(manifest), dumps(manifest.to_json()))

    def delete_manifest(self, stage: str, eid: str) -> None:
        """Forget a state (prune), and the output its attempts printed."""
        self._delete_record(self.manifest_path(stage, eid))
        self._delete_record(self.output_path(stage, eid))
        remove_logs(str(self.manifest_path(stage, eid)))  # an aggregate's member logs

    def write_failure(self, failure: Failure) -> None:
        """Record a failure durably."""
        self._write_record(self._path_of(failure), dumps(failure.to_json()))

    def delete_failure(self, stage: str, eid: str) -> None:
        """Forget a failure (after success or a manual retry)."""
        self._delete_record(self.failure_path(stage, eid))

    def write_control(self, control: Control) -> None:
        """Persist holds and invalidations durably."""
        self._write_record(self.control_path, dumps(control.to_json()))

    def stage(self, records: Iterable[Record]) -> list[Staged]:
        """Write records to temps beside their places, not yet durable nor in place (the first
        step of a group commit). On failure nothing is left behind and OSError is raised."""
        staged: list[Staged] = []
        try:
            for record in records:
                path = self._path_of(record)
                if isinstance(record, Manifest) and record.members:
                    # An aggregate's member log lines, before the barrier and the rename.
                    folder = os.path.dirname(path)
                    os.makedirs(folder, exist_ok=True)
                    write_logs(record, folder)
                self._write_record(path, dumps(record.to_json()), staged)
        except BaseException:
            self.abandon(staged)
            raise
        return staged

    @staticmethod
    def install(staged: Iterable[Staged]) -> None:
        """Put staged records in place (after the barrier that made their contents durable)."""
        for tmp, path in staged:
            os.replace(tmp, path)

    @staticmethod
    def abandon(staged: Iterable[Staged]) -> None:
        """Remove the temps of a group commit that failed (those not installed yet)."""
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- the workspace lock ---------------------------------------------------------------
    @property
    def crashed_before(self) -> bool:
        """True when the previous holder of the lock did not stop cleanly (set by acquire_lock)."""
        return self._lock.crashed_before

    def acquire_lock(self, purpose: str) -> None:
        """Take the one-writer lock; LockHeld names the holder when another process has it."""
        self._lock.acquire(purpose)

    def release_lock(self) -> None:
        """Release the lock (closing the attempt log this writer kept); safe to call twice."""
        self.attempts.close()
        self._lock.release()

    def lock_holder(self) -> str | None:
        """Who holds the lock, as text ("eventrunner serve (pid 123 on host)")."""
        return self._lock.holder()


def _read(path: Path, cls: Any) -> Any:
    try:
        item = cls.from_json(json.loads(path.read_bytes()))  # a Manifest or a Failure
        return item.locate(str(path.parent)) if isinstance(item, Manifest) else item
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
