"""In-memory view of every state: known pattern instances, manifests, failures, a stat/hash cache.

Persisted as a rebuildable cache (`.eventrunner/index.sqlite` and `index.seal`, state/indexdb.py)
read a record at a time: a load reads the control and the failures, the manifests and the
stat/hash cache are maps read on demand (state/lazymap.py), so memory holds what the hot path
asked for and what is not saved yet; a save writes only what changed, in one transaction. A
`dirty` marker is written before any change to state and removed once the cache is saved
again; a cache found dirty (a crash mid-run), damaged, foreign or not sealed is ignored and
rebuilt from manifests.

The index owns its maps: they change only through methods named for what happened (below
"what happened"), which mark it dirty themselves and have the store write a change first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.core.records import Control, Failure, Manifest
from eventrunner.state import heap, indexdb, indexmaps
from eventrunner.state.entities import EntityQueries
from eventrunner.state.filecache import FileCache
from eventrunner.state.instances import Instances
from eventrunner.state.lazymap import LazyMap
from eventrunner.state.saving import Saving
from eventrunner.state.scan import scan
from eventrunner.state.store import Store

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

CACHE_VERSION = indexdb.CACHE_VERSION


class Index(Saving, EntityQueries):
    """Everything needed to decide staleness without reading manifests one by one."""

    def __init__(self, ws: Workspace, store: Store) -> None:
        self.ws = ws
        self.store = store
        self.root = ws.settings.data_root
        self.db = indexdb.IndexDB(store.root)
        self.files = FileCache(self.root, indexmaps.file_map(self.db, self._damaged))
        self.instances: dict[str, Instances] = {
            k: Instances(p) for k, p in ws.graph.patterns.items()
        }
        self.manifests: dict[str, LazyMap[Manifest]] = {
            s: indexmaps.manifest_map(self.db, store, s, self._damaged) for s in ws.graph.stages
        }
        self.failures: dict[str, dict[str, Failure]] = {s: {} for s in ws.graph.stages}
        self.control = Control()
        self.running: set[tuple[str, str]] = set()
        self._dirty_marked = False
        self.generation = 0  # bumped by every change: a save knows if state moved on since
        self._changed = False  # manifests, failures or control differ from the saved cache
        self.recovered = False  # loaded by rebuilding from manifests (see load)
        self.damaged = False  # the cache file was found damaged: kept dirty, never stamped
        # Failures and control changed since the last save (manifests and stat/hash entries
        # keep theirs in their maps' overlays).
        self.delta_f: set[tuple[str, str]] = set()
        self.delta_control = False
        self._written: dict[str, Any] | None = None  # the last save's data, once committed
        self._taken: dict[str, Any] | None = None  # the last save's data, until it ends

    def warm(self) -> None:
        """Read every manifest and stat/hash entry in one scan each, kept until `cool` (a full
        check asks for nearly all of them: a scan instead of a query per key)."""
        for _ in self.warm_in_steps():
            pass

    def warm_in_steps(self) -> Iterator[None]:
        """warm() a few thousand records at a time (LazyMap.warm_in_steps): serve's passes
        over every state take their scans this way, the loop serving others between steps."""
        for mm in self.manifests.values():
            if not mm.complete:
                yield from mm.warm_in_steps()
        if not self.files.entries.complete:
            yield from self.files.entries.warm_in_steps()

    def cool(self) -> None:
        """Back to bounded caches of what is asked for (serve, once its full check is done)."""
        for mm in self.manifests.values():
            mm.cool()
        self.files.entries.cool()

    def cool_warm(self) -> None:
        """`cool` only the maps a scan made complete (cheap when none is), and give the memory
        they held back to the system."""
        cooled = self.files.entries.complete
        for mm in self.manifests.values():
            if mm.complete:
                mm.cool()
                cooled = True
        if self.files.entries.complete:
            self.files.entries.cool()
        if cooled:
            heap.trim()

    @property
    def changed(self) -> bool:
        """Anything the cache should learn (saved only then)."""
        return self._changed or self.files.changed

    # -- persistence --------------------------------------------------------------------
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
        """Control and failures from a clean, sealed cache (the rest is read on demand)."""
        if self.dirty_path.exists() or not self.db.open():
            return False
        try:
            control = self.db.control()
            failures = list(self.db.failures())
        except indexdb.Damaged:
            self.db.close()
            self.db.fresh = True
            return False
        self.control = control or Control()
        for f in failures:
            if f.stage in self.failures:
                self.failures[f.stage][sys.intern(f.entity)] = f
        return True

    def _rebuild(self) -> None:
        """Everything from the store, held unsaved until the next save writes a new file."""
        for m in self.store.iter_manifests():
            if m.stage in self.manifests:
                self.manifests[m.stage][m.entity] = m
        for f in self.store.iter_failures():
            if f.stage in self.failures:
                self.failures[f.stage][f.entity] = f
                self.delta_f.add((f.stage, f.entity))
        self.control = self.store.read_control()
        self.delta_control = True
        self._changed = True

    def stage_outputs(self, q: str) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
        """(output paths, dropped paths) of every manifest of stage q (a narrow scan)."""
        return indexmaps.stage_outputs(self.db, self.store, q, self.manifests[q], self._damaged)

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
        self.delta_f.add((q, eid))

    def outputs_pruned(self, q: str, eid: str) -> None:
        """The fan-out outputs a state no longer produces were deleted: its manifest says so."""
        m = self.manifests[q][eid].without_dropped()
        self._mark_dirty()
        self.store.write_manifest(m)
        self.manifests[q][eid] = m

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
