"""In-memory view of every state: known pattern instances, manifests, failures, a stat/hash cache.

Persisted as a rebuildable cache (`.eventrunner/index.pickle` plus `index.journal`, state/journal.py)
so that a no-change run reads one file plus stats, and a save appends only what changed since
the previous one. A `dirty` marker is written before any change to state and removed once the
cache is saved again; a cache found dirty (a crash mid-run), torn or of another snapshot is
ignored and rebuilt from manifests.

The index owns its maps: they change only through methods named for what happened (below
"what happened"), which mark it dirty themselves and have the store write a change first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.core.records import Control, Failure, Manifest
from eventrunner.state import journal
from eventrunner.state.entities import EntityQueries
from eventrunner.state.filecache import FileCache
from eventrunner.state.files import atomic_write
from eventrunner.state.instances import Instances
from eventrunner.state.scan import scan
from eventrunner.state.store import Store

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

CACHE_VERSION = journal.CACHE_VERSION


class Index(EntityQueries):
    """Everything needed to decide staleness without reading manifests one by one."""

    def __init__(self, ws: Workspace, store: Store) -> None:
        self.ws = ws
        self.store = store
        self.root = ws.settings.data_root
        self.files = FileCache(self.root)
        self.instances: dict[str, Instances] = {
            k: Instances(p) for k, p in ws.graph.patterns.items()
        }
        self.manifests: dict[str, dict[str, Manifest]] = {s: {} for s in ws.graph.stages}
        self.failures: dict[str, dict[str, Failure]] = {s: {} for s in ws.graph.stages}
        self.control = Control()
        self.running: set[tuple[str, str]] = set()
        self._dirty_marked = False
        self.generation = 0  # bumped by every change: a save knows if state moved on since
        self._changed = False  # manifests, failures or control differ from the saved cache
        self.recovered = False  # loaded by rebuilding from manifests (see load)
        # What changed since the last save (the journal's next frame): (stage, entity) keys.
        self.delta_m: set[tuple[str, str]] = set()
        self.delta_f: set[tuple[str, str]] = set()
        self.delta_control = False
        self._full_next = True  # the next save writes a whole snapshot (no trusted pair yet)

    @property
    def changed(self) -> bool:
        """Anything the cache should learn (saved only then)."""
        return self._changed or self.files.changed

    # -- persistence --------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.store.root / "index.pickle"

    @property
    def journal_path(self) -> Path:
        return self.store.root / "index.journal"

    @property
    def dirty_path(self) -> Path:
        return self.store.root / "index.dirty"

    @classmethod
    def load(
        cls, ws: Workspace, store: Store, source_ids: dict[str, list[str]] | None = None
    ) -> Index:
        """From the cache when it is clean, else rebuilt from manifests and failure records.

        Source instances come from a scan, or from `source_ids` (key -> entity ids) when the
        caller knows them to be the sources on disk now: a stamp's, when no stamped folder
        changed since (the scan is then skipped: 0.4 s at 100,000 files)."""
        idx = cls(ws, store)
        if not idx._load_cache():
            idx.recovered = True  # no clean cache: a crash (or first use); manifests are the truth
            idx._rebuild()
        if source_ids is not None and set(source_ids) == set(ws.graph.sources):
            for key, ids in source_ids.items():
                inst = Instances(idx.instances[key].pattern)
                inst.items = dict.fromkeys(map(sys.intern, ids))
                idx.instances[key] = inst
        else:
            idx.scan_sources()
        idx.derive()
        return idx

    def _load_cache(self) -> bool:
        if self.dirty_path.exists():
            return False
        try:
            data, frames = journal.read(self.cache_path, self.journal_path)
        except journal.UNREADABLE:
            return False
        if data.get("version") != CACHE_VERSION:
            return False
        self.files.entries = data["files"]
        self.manifests.update((s, ms) for s, ms in data["manifests"].items() if s in self.manifests)
        self.failures.update((s, fs) for s, fs in data["failures"].items() if s in self.failures)
        self.control = data["control"]
        for frame in frames:
            self.control = journal.replay(
                frame, self.files.entries, self.manifests, self.failures, self.control
            )
        self._full_next = False
        return True

    def _rebuild(self) -> None:
        for m in self.store.iter_manifests():
            if m.stage in self.manifests:
                self.manifests[m.stage][m.entity] = m
        for f in self.store.iter_failures():
            if f.stage in self.failures:
                self.failures[f.stage][f.entity] = f
        self.control = self.store.read_control()

    def _mark_dirty(self) -> None:
        """Say on disk that state is about to change, before it does (every change calls it)."""
        self.generation += 1
        self._changed = True
        if not self._dirty_marked:
            self.store.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dirty_path, b"", durable=True)
            self._dirty_marked = True

    def save(self) -> None:
        """Write what changed (or a whole snapshot), then clear the dirty marker."""
        generation, data = self.snapshot()
        try:
            self.write_snapshot(data)
        except BaseException:
            self.failed_save()
            raise
        self.saved(generation)

    def failed_save(self) -> None:
        """A snapshot taken was not written (a frame may be torn): the next save is whole."""
        self._changed = True
        self._full_next = True

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """What the next save writes, copied so that it can be pickled while the index moves on
        (entries are never changed in place): the changes since the last save, or everything
        when there is no trusted pair on disk or the journal is due for compaction; with the
        generation it was taken at."""
        if self._full_next or journal.needs_compaction(self.cache_path, self.journal_path):
            data = journal.whole(self)
        else:
            data = journal.changes(self)
        self.delta_m, self.delta_f, self.delta_control = set(), set(), False
        self._full_next = False
        self._changed = False
        # A state running now commits without bumping the generation before its store write:
        # a snapshot taken meanwhile must never clear the marker (-1 matches no generation).
        return (-1 if self.running else self.generation), data

    def write_snapshot(self, data: dict[str, Any]) -> None:
        """Write a snapshot: a journal frame, or a whole cache (touches nothing else: safe in a
        thread)."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        if data["kind"] == "changes":
            journal.append(self.journal_path, data)
        else:
            journal.write_full(self.cache_path, self.journal_path, data)

    def saved(self, generation: int) -> None:
        """The snapshot of `generation` is on disk: clear the dirty marker, unless state changed
        since the snapshot (the cache would then miss that change after a crash)."""
        if generation == self.generation:
            self.dirty_path.unlink(missing_ok=True)
            self._dirty_marked = False

    # -- what happened: the only ways the maps change -----------------------------------------
    def attempt_started(self, q: str, eid: str, key: str, attempt: int, started: float) -> None:
        """A handler is about to be called: the state runs, and the call is noted (one that
        takes the process down then counts as a failed attempt: state/recovery.py)."""
        self._mark_dirty()
        self.store.attempts.started(q, eid, key, attempt, started)
        self.running.add((q, eid))

    def handler_returned(self, q: str, eid: str) -> None:
        """The handler returned or raised (its outcome follows): it did not take us down."""
        self.store.attempts.returned(q, eid)

    def attempt_ended(self, q: str, eid: str) -> None:
        """The attempt is over (committed, failed or given up): the state no longer runs."""
        self.running.discard((q, eid))

    def record_success(
        self, m: Manifest, written: dict[str, str], stats: dict[str, os.stat_result] | None = None
    ) -> Manifest | None:
        """A state was committed (the store has its manifest): keep the manifest, trust the
        hashes of the files written (`stats`: their stats taken by the committer just after
        their renames, where it has them), refresh fan-out instances; returns the manifest
        replaced."""
        self._mark_dirty()
        for relpath, digest in written.items():
            self.files.remember(relpath, digest, stats.get(relpath) if stats else None)
        old = self.manifests[m.stage].get(m.entity)
        self.manifests[m.stage][m.entity] = m
        self.delta_m.add((m.stage, m.entity))
        stage = self.ws.graph.stages[m.stage]
        if stage.fanout_vars:
            key = stage.output.key
            pattern = self.instances[key].pattern
            for relpath in old.outputs if old else ():
                if relpath not in m.outputs:
                    values = pattern.match(relpath)
                    if values is not None:
                        self._discard_instance(key, values)
            for relpath in m.outputs:
                values = pattern.match(relpath)
                if values is not None:
                    self._add_instance(key, values, relpath)
        if self.failures[m.stage].pop(m.entity, None) is not None:
            self.delta_f.add((m.stage, m.entity))
        return old

    def record_failure(self, failure: Failure, *, write: bool = False) -> None:
        """An attempt failed: keep its record (`write`: the store writes it durably first; else
        the caller's group commit did, or could not and it is kept in memory for the sweep)."""
        self._mark_dirty()
        if write:
            self.store.write_failure(failure)
        self.failures[failure.stage][failure.entity] = failure
        self.delta_f.add((failure.stage, failure.entity))

    def clear_failure(self, q: str, eid: str) -> bool:
        """Forget a state's failure (a manual retry, prune); False when it had none."""
        if eid not in self.failures[q]:
            return False
        self._mark_dirty()
        self.store.delete_failure(q, eid)
        del self.failures[q][eid]
        self.delta_f.add((q, eid))
        return True

    def set_control(self, control: Control) -> None:
        """Holds and invalidations changed (a changed `Control.copy()`): durable, then live."""
        self._mark_dirty()
        self.store.write_control(control)
        self.control = control
        self.delta_control = True

    def forget_state(self, q: str, eid: str) -> None:
        """A state is gone (prune, its outputs deleted): drop its manifest and failure."""
        self._mark_dirty()
        self.store.delete_manifest(q, eid)
        self.store.delete_failure(q, eid)
        self.manifests[q].pop(eid, None)
        self.failures[q].pop(eid, None)
        self.delta_m.add((q, eid))
        self.delta_f.add((q, eid))

    def outputs_pruned(self, q: str, eid: str) -> None:
        """The fan-out outputs a state no longer produces were deleted: its manifest says so."""
        m = self.manifests[q][eid].without_dropped()
        self._mark_dirty()
        self.store.write_manifest(m)
        self.manifests[q][eid] = m
        self.delta_m.add((q, eid))

    def source_appeared(self, key: str, values: dict[str, str], relpath: str | None = None) -> None:
        """A source file came (or changed): its instance and the entities it binds exist."""
        self._add_instance(key, values, relpath)

    def source_vanished(self, key: str, values: dict[str, str], relpath: str) -> None:
        """A source file went: its instance, its cache entry and entities only it bound go."""
        self._discard_instance(key, values)
        self.files.forget(relpath)

    def file_written(self, relpath: str, digest: str) -> None:
        """We wrote this content (a webhook body): its next check costs one stat, not a hash."""
        self.files.remember(relpath, digest)

    def file_removed(self, relpath: str) -> None:
        """We deleted this file (prune): drop its cache entry."""
        self.files.forget(relpath)

    # -- instances --------------------------------------------------------------------------
    def scan_sources(self) -> None:
        """Full scan of every source pattern (start-up and reconcile only: O(workspace))."""
        for key in self.ws.graph.sources:
            inst = Instances(self.instances[key].pattern)
            for _relpath, values in scan(inst.pattern, self.root):
                inst.add(values)  # path() joins it again when asked: one string less per file
            self.instances[key] = inst

    def source_paths(self) -> set[str]:
        """Relpaths of every source file known now."""
        return {
            self.instances[key].path(e)
            for key in self.ws.graph.sources
            for e in self.instances[key].items
        }

    def derive(self) -> None:
        """Instances of produced patterns, from their producers' entities, upstream first."""
        g = self.ws.graph
        for q in g.order:
            stage = g.stages[q]
            inst = Instances(self.instances[stage.output.key].pattern)
            if stage.fanout_vars:
                for m in self.manifests[q].values():
                    if not self.has_entity(q, m.values):
                        continue  # an orphaned fan-out: its items are gone with its input
                    for relpath in m.outputs:
                        values = inst.pattern.match(relpath)
                        if values is not None:
                            inst.add(values, relpath)
            elif inst.pattern.variables == tuple(stage.entity_vars):
                # The output's ids are the stage's entity ids: one dict built in C, not an add()
                # per entity (200,000 at 100,000 entities x 2 stages).
                inst.items = dict.fromkeys(map(sys.intern, self.stage_entity_ids(q)))
            else:
                for _eid, values in self.stage_entities(q):
                    inst.add(values)
            self.instances[stage.output.key] = inst

    def _add_instance(self, key: str, values: dict[str, str], relpath: str | None = None) -> None:
        """A pattern instance appeared: entities it binds downstream appear too (cascading)."""
        inst = self.instances[key]
        eid = entity_id(inst.pattern.variables, values)
        if eid in inst.items:
            return
        inst.add(values, relpath)
        g = self.ws.graph
        for q, iname in g.consumers.get(key, []):
            stage = g.stages[q]
            if stage.fanout_vars or iname not in stage.drivers:
                continue
            ent = {v: values[v] for v in stage.entity_vars}
            self._add_instance(stage.output.key, ent)

    def _discard_instance(self, key: str, values: dict[str, str]) -> None:
        """A pattern instance is gone: entities no other driver binds disappear downstream."""
        inst = self.instances[key]
        if not inst.discard(entity_id(inst.pattern.variables, values)):
            return
        g = self.ws.graph
        for q, iname in g.consumers.get(key, []):
            stage = g.stages[q]
            if iname not in stage.drivers:
                continue
            ent = {v: values[v] for v in stage.entity_vars}
            if self.has_entity(q, ent):
                continue
            if not stage.fanout_vars:
                self._discard_instance(stage.output.key, ent)
                continue
            m = self.manifests[q].get(entity_id(stage.entity_vars, ent))
            for relpath in m.outputs if m else ():
                item = self.instances[stage.output.key].pattern.match(relpath)
                if item is not None:
                    self._discard_instance(stage.output.key, item)
