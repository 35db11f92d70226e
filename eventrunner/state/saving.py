"""Saving the index: the dirty marker, snapshots of what changed, one-transaction writes.

A part of the Index class (state/index.py), kept apart so that each part reads in one sitting.
A `dirty` marker is written before any change to state and removed once a save holds every
change; a snapshot copies the changes (the maps' overlays, failures and control) so that it can
be written in a thread while the index moves on, and what it wrote is unpinned once written.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from eventrunner.core.records import Control, Failure, Manifest
from eventrunner.state.filecache import FileCache
from eventrunner.state.files import atomic_write
from eventrunner.state.indexdb import IndexDB
from eventrunner.state.lazymap import LazyMap
from eventrunner.state.store import Store

log = logging.getLogger("eventrunner.index")


class Saving:
    """The Index's persistence (a mixin: Index declares the state)."""

    db: IndexDB
    store: Store
    files: FileCache
    manifests: dict[str, LazyMap[Manifest]]
    failures: dict[str, dict[str, Failure]]
    control: Control
    running: set[tuple[str, str]]
    generation: int
    damaged: bool
    delta_f: set[tuple[str, str]]
    delta_control: bool
    _changed: bool
    _dirty_marked: bool
    _written: dict[str, Any] | None
    _taken: dict[str, Any] | None

    @property
    def cache_path(self) -> Path:
        return self.db.path

    @property
    def seal_path(self) -> Path:
        """Replaced at every save: its stat tells a stamp that state moved."""
        return self.db.seal_path

    @property
    def dirty_path(self) -> Path:
        return self.store.root / "index.dirty"

    def _damaged(self) -> None:
        """A value of the cache file did not check out: mark dirty (the next load rebuilds),
        never clear the mark in this process, write no more to that file."""
        if not self.damaged:
            log.warning(
                "index cache %s is damaged: read from the manifests, rebuilt next start",
                self.cache_path,
            )
            self.damaged = self.db.damaged = True
            self.generation += 1
            atomic_write(self.dirty_path, b"", durable=True)
            self._dirty_marked = True
            for mm in self.manifests.values():
                mm.forget_cache()
            self.files.entries.forget_cache()

    def _mark_dirty(self) -> None:
        """Say on disk that state is about to change, before it does (every change calls it)."""
        self.generation += 1
        self._changed = True
        if not self._dirty_marked:
            self.store.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dirty_path, b"", durable=True)
            self._dirty_marked = True

    def save(self) -> None:
        """Write what changed in one transaction, then clear the dirty marker."""
        generation, data = self.snapshot()
        try:
            self.write_snapshot(data)
        except BaseException:
            self.failed_save()
            raise
        self.saved(generation)

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """What the next save writes: the changes since the last save (None: deleted), copied
        so that they can be written while the index moves on (records are never changed in
        place); with the generation it was taken at."""
        data = {
            "manifests": {q: mm.taken() for q, mm in self.manifests.items() if mm.pending},
            "failures": {k: copy.copy(self.failures[k[0]].get(k[1])) for k in self.delta_f},
            "files": self.files.delta(),
            "control": copy.deepcopy(self.control) if self.delta_control else None,
        }
        self.delta_f, self.delta_control = set(), False
        self._changed = False
        self._taken = data
        # A state running now commits without bumping the generation before its store write:
        # a snapshot taken meanwhile must never clear the marker (-1 matches no generation).
        return (-1 if self.running else self.generation), data

    def failed_save(self) -> None:
        """The snapshot taken was not written: its failures and control go into the next one
        (manifests and entries are still in their overlays)."""
        self._changed = True
        data, self._taken = self._taken, None
        if data is not None:
            self.delta_f.update(k for k in data["failures"] if k[0] in self.failures)
            self.delta_control = self.delta_control or data["control"] is not None

    def write_snapshot(self, data: dict[str, Any]) -> None:
        """Write a snapshot in one transaction (touches nothing else: safe in a thread)."""
        if self.damaged:
            return  # the file is not trusted any more: the marker stays, the next load rebuilds
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.db.write(data)
        self._written = data

    def saved(self, generation: int) -> None:
        """The snapshot of `generation` is on disk: unpin what it wrote, and clear the dirty
        marker unless state changed since (the cache would then miss that change after a
        crash)."""
        data, self._written, self._taken = self._written, None, None
        if data is not None:
            for q, written in data["manifests"].items():
                self.manifests[q].settled(written)
            self.files.entries.settled(data["files"])
        if generation == self.generation and not self.damaged:
            self.dirty_path.unlink(missing_ok=True)
            self._dirty_marked = False
