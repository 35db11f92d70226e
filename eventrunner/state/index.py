"""In-memory view of every state: known pattern instances, manifests, failures, a stat/hash cache.

Persisted as a rebuildable cache (`.eventrunner/index.pickle`) so that a no-change run reads one
file plus stats. A `dirty` marker is written before any change to state and removed once the
cache is saved again; a cache found dirty (a crash mid-run) is ignored and rebuilt from manifests.
"""

from __future__ import annotations

import asyncio
import copy
import os
import pickle
import stat
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventrunner.core.patterns import Pattern, parse_entity_id, scan
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.state.hashing import hash_path
from eventrunner.state.store import Control, Failure, Manifest, Store, atomic_write

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

CACHE_VERSION = 10
# A file modified this recently may be modified again within the same mtime tick; don't trust
# its cached hash (git's "racily clean" problem).
RACY_NS = 50_000_000


# The stat cache holds one packed bytes object per file, (size, mtime_ns, inode, 16-byte digest):
# ~75 bytes instead of ~220 for an object with four fields (300,000 files at 100,000 entities).
_STAT = struct.Struct("<qqQ16s")
_KEY = struct.Struct("<qqQ")


def pack_stat(size: int, mtime_ns: int, ino: int, digest: str) -> bytes | None:
    """One stat-cache entry; None for a digest that is not 32 hex digits (not cached then)."""
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    return _STAT.pack(size, mtime_ns, ino, raw) if len(raw) == 16 else None


def unpack_stat(entry: bytes) -> tuple[int, int, int, str]:
    """(size, mtime_ns, inode, hex digest) of a stat-cache entry."""
    size, mtime_ns, ino, raw = _STAT.unpack(entry)
    return size, mtime_ns, ino, raw.hex()


Key = tuple[str, ...]


class Instances:
    """Known instances of one pattern: entity id -> relpath (or None), with lazy projections.

    Values are not stored: they are read back from the entity id when needed (ids are reversible),
    which keeps 100,000s of instances to one dict entry each.
    """

    __slots__ = ("_proj", "_single", "items", "pattern")

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        # relpath None unless it came with the instance (path() joins it from the values).
        self.items: dict[str, str | None] = {}
        self._proj: dict[Key, dict[Key, set[str]]] = {}
        self._single = pattern.variables[0] if len(pattern.variables) == 1 else None

    def values(self, eid: str) -> dict[str, str]:
        """The variable values of an entity id of this pattern."""
        if self._single is not None and "%" not in eid:
            return {self._single: eid}  # the common case: the id is the value itself
        return parse_entity_id(self.pattern.variables, eid)

    def add(self, values: dict[str, str], relpath: str | None = None) -> str:
        """Record an instance; returns its entity id."""
        eid = entity_id(self.pattern.variables, values)
        if eid in self.items:
            return eid
        eid = sys.intern(eid)  # one string per entity, shared with its states' manifests
        self.items[eid] = relpath
        for vars_, groups in self._proj.items():
            groups.setdefault(tuple(values[v] for v in vars_), set()).add(eid)
        return eid

    def path(self, eid: str) -> str:
        """The relpath of a known instance."""
        relpath = self.items[eid]
        return relpath if relpath is not None else self.pattern.join(self.values(eid))

    def discard(self, eid: str) -> bool:
        """Forget an instance; True if it was known."""
        if eid not in self.items:
            return False
        del self.items[eid]
        if self._proj:
            values = self.values(eid)
            for vars_, groups in self._proj.items():
                k = tuple(values[v] for v in vars_)
                members = groups.get(k)
                if members is not None:
                    members.discard(eid)
                    if not members:
                        del groups[k]
        return True

    def projection(self, vars_: Key) -> dict[Key, set[str]]:
        """Instances grouped by their values of `vars_` (built once, then kept up to date)."""
        groups = self._proj.get(vars_)
        if groups is None:
            groups = {}
            for eid in self.items:
                values = self.values(eid)
                groups.setdefault(tuple(values[v] for v in vars_), set()).add(eid)
            self._proj[vars_] = groups
        return groups

    def covers(self, vars_: Key) -> bool:
        """True when `vars_` are all of the pattern's variables (in any order)."""
        return len(vars_) == len(self.pattern.variables) and set(vars_) == set(
            self.pattern.variables
        )

    def binds(self, vars_: Key, values: Mapping[str, str]) -> bool:
        """True when some instance has these values for `vars_` (the hot path of has_entity)."""
        if self.covers(vars_):
            return entity_id(self.pattern.variables, values) in self.items
        return tuple(values[v] for v in vars_) in self.projection(vars_)

    def select(self, vars_: Key, key: Key) -> set[str]:
        """Instances whose `vars_` have the values `key`."""
        if self.covers(vars_):
            # Every variable fixed: at most one instance, found by its id (no projection to keep).
            eid = entity_id(self.pattern.variables, dict(zip(vars_, key, strict=True)))
            return {eid} if eid in self.items else set()
        return self.projection(vars_).get(key, set())

    def keys(self, vars_: Key) -> Iterator[Key]:
        """The distinct values of `vars_` among the instances."""
        if self.covers(vars_):
            if self._single is not None:
                return (
                    (e,) if "%" not in e else (self.values(e)[self._single],) for e in self.items
                )
            return (tuple(vs[v] for v in vars_) for vs in map(self.values, self.items))
        return iter(self.projection(vars_))


class Index:
    """Everything needed to decide staleness without reading manifests one by one."""

    def __init__(self, ws: Workspace, store: Store) -> None:
        self.ws = ws
        self.store = store
        self.root = ws.settings.data_root
        self._prefix = os.path.join(os.fspath(self.root), "")  # "root/": relpaths are "/"-joined
        self.files: dict[str, bytes] = {}  # relpath -> pack_stat(...)
        self._racy: set[str] = set()  # entries remember_file added since the last save
        # Files whose stats this process found different from the cache (hashed, written or
        # gone): an incremental stamp re-reads only these (stamping.write_stamp).
        self.touched: set[str] = set()
        self.instances: dict[str, Instances] = {
            k: Instances(p) for k, p in ws.graph.patterns.items()
        }
        self.manifests: dict[str, dict[str, Manifest]] = {s: {} for s in ws.graph.stages}
        self.failures: dict[str, dict[str, Failure]] = {s: {} for s in ws.graph.stages}
        self.control = Control()
        self.running: set[tuple[str, str]] = set()
        self._dirty_marked = False
        self.generation = 0  # bumped by every mark_dirty(): a save knows if state moved on since
        self.changed = False  # anything the cache should learn (saved only then)
        self.written: set[str] = set()
        self.recovered = False  # loaded by rebuilding from manifests (see load)  # outputs this process wrote (trusted: see remember_file)

    # -- persistence --------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.store.root / "index.pickle"

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
            with open(self.cache_path, "rb") as fh:
                data = pickle.load(fh)
        except (OSError, pickle.PickleError, EOFError, AttributeError, ValueError, TypeError):
            return False
        if data.get("version") != CACHE_VERSION:
            return False
        self.files = data["files"]
        for s, ms in data["manifests"].items():
            if s in self.manifests:
                self.manifests[s] = ms
        for s, fs in data["failures"].items():
            if s in self.failures:
                self.failures[s] = fs
        self.control = data["control"]
        return True

    def _rebuild(self) -> None:
        for m in self.store.iter_manifests():
            if m.stage in self.manifests:
                self.manifests[m.stage][m.entity] = m
        for f in self.store.iter_failures():
            if f.stage in self.failures:
                self.failures[f.stage][f.entity] = f
        self.control = self.store.read_control()

    def mark_dirty(self) -> None:
        """Say on disk that state is about to change, before it does."""
        self.generation += 1
        if not self._dirty_marked:
            self.store.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dirty_path, b"", durable=True)
            self._dirty_marked = True

    def save(self) -> None:
        """Write the cache, then clear the dirty marker."""
        generation, data = self.snapshot()
        try:
            self.write_snapshot(data)
        except BaseException:
            self.changed = True
            raise
        self.saved(generation)

    async def save_async(self) -> None:
        """save() with the pickling and writing in a thread: the loop may go on changing state."""
        generation, data = self.snapshot()
        try:
            await asyncio.to_thread(self.write_snapshot, data)
        except BaseException:
            self.changed = True
            raise
        self.saved(generation)

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """What the cache holds, copied (shallowly: entries are not changed in place) so that it
        can be pickled while the index moves on; with the generation it was taken at."""
        racy = time.time_ns() - RACY_NS
        # Only our own writes are cached while racy (file_hash skips such files).
        for rel in self._racy:
            entry = self.files.get(rel)
            if entry is not None:
                size, mtime_ns, ino, raw = _STAT.unpack(entry)
                if (
                    mtime_ns > racy
                ):  # may change again within its mtime tick: re-hash once next time
                    self.files[rel] = _STAT.pack(size, -1, ino, raw)
        self._racy.clear()
        data = {
            "version": CACHE_VERSION,
            "files": dict(self.files),
            "manifests": {s: dict(ms) for s, ms in self.manifests.items()},
            "failures": {
                s: {e: copy.copy(f) for e, f in fs.items()} for s, fs in self.failures.items()
            },
            "control": copy.deepcopy(self.control),
        }
        self.changed = False
        # A state running now commits without another mark_dirty(): a snapshot taken meanwhile
        # must never clear the marker (-1 matches no generation).
        return (-1 if self.running else self.generation), data

    def write_snapshot(self, data: dict[str, Any]) -> None:
        """Pickle a snapshot to the cache file (touches nothing else: safe in a thread)."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.cache_path, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), durable=True
        )

    def saved(self, generation: int) -> None:
        """The snapshot of `generation` is on disk: clear the dirty marker, unless state changed
        since the snapshot (the cache would then miss that change after a crash)."""
        if generation == self.generation:
            self.dirty_path.unlink(missing_ok=True)
            self._dirty_marked = False

    # -- files ----------------------------------------------------------------------------
    def file_hash(self, relpath: str) -> str | None:
        """Content hash through the stat fast path; None when the file is missing."""
        path = self._prefix + relpath
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.forget_file(relpath)
            return None
        entry = self.files.get(relpath)
        # A folder's own stat does not change when a file inside it is edited in place: only
        # plain files are taken from the cache; a folder output's tree is hashed every time.
        folder = stat.S_ISDIR(st.st_mode)
        if (
            entry is not None
            and not folder
            and entry[:24] == _KEY.pack(st.st_size, st.st_mtime_ns, st.st_ino)
        ):
            return entry[24:].hex()
        self.touched.add(relpath)
        try:
            digest = hash_path(Path(path))
        except FileNotFoundError:
            return None
        entry = pack_stat(st.st_size, st.st_mtime_ns, st.st_ino, digest)
        if entry is not None and time.time_ns() - st.st_mtime_ns > RACY_NS:
            self.files[sys.intern(relpath)] = entry
            self.changed = True
        else:
            self.files.pop(relpath, None)
        return digest

    def remember_file(self, relpath: str, digest: str) -> None:
        """Cache the hash of a file we just wrote (so its next check costs one stat)."""
        try:
            st = os.stat(self._prefix + relpath)
        except FileNotFoundError:
            return
        # We produced this content and hashed it: trusted in memory; save() demotes entries still
        # inside the racy window so a later process re-hashes them once.
        entry = pack_stat(st.st_size, st.st_mtime_ns, st.st_ino, digest)
        if entry is None:
            self.forget_file(relpath)
            return
        relpath = sys.intern(relpath)
        self.files[relpath] = entry
        self._racy.add(relpath)
        self.written.add(relpath)
        self.touched.add(relpath)
        self.changed = True

    def forget_file(self, relpath: str) -> None:
        """Drop a file's cache entry (it is gone, or about to be)."""
        self.files.pop(relpath, None)
        self.touched.add(relpath)

    def sweep_temps(self) -> int:
        """Delete `.er-tmp-*` debris a crash left in output and source folders (call with the lock held)."""
        from eventrunner.state.store import TMP_PREFIX

        dirs = {
            os.path.dirname(os.path.join(self.root, rel))
            for ms in self.manifests.values()
            for m in ms.values()
            for rel in m.outputs
        }
        for inst in self.instances.values():
            dirs.add(os.path.join(self.root, inst.pattern.static_prefix))
        removed = 0
        for d in dirs:
            try:
                with os.scandir(d) as it:
                    stale = [e.path for e in it if e.name.startswith(TMP_PREFIX)]
            except OSError:
                continue
            for path in stale:
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        import shutil

                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                    removed += 1
                except OSError:
                    pass
        return removed

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
            else:
                for _eid, values in self.stage_entities(q):
                    inst.add(values)
            self.instances[stage.output.key] = inst

    def stage_entities(self, qualname: str) -> Iterator[tuple[str, dict[str, str]]]:
        """(entity id, values) of every entity a stage has now, from its driver inputs."""
        stage = self.ws.graph.stages[qualname]
        if not stage.inputs:
            yield entity_id((), {}), {}
            return
        seen: set[Key] = set()
        ev = stage.entity_vars
        for name in stage.drivers:
            inp = stage.input(name)
            single = len(stage.drivers) == 1  # keys of one driver are distinct already
            for key in self.instances[inp.pattern.key].keys(ev):
                if single or key not in seen:
                    if not single:
                        seen.add(key)
                    values = dict(zip(ev, key, strict=True))
                    yield entity_id(ev, values), values

    def entity_values(self, qualname: str, eid: str) -> dict[str, str]:
        """The values of an entity id of a stage (PatternError if it is not one)."""
        names = self.ws.graph.stages[qualname].entity_vars
        if len(names) == 1 and "%" not in eid and "," not in eid and "=" not in eid:
            return {names[0]: eid}
        return parse_entity_id(names, eid)

    def values_or_none(self, qualname: str, eid: str) -> dict[str, str] | None:
        """entity_values, or None for text that is not an entity id of the stage."""
        from eventrunner.core.errors import PatternError

        try:
            return self.entity_values(qualname, eid)
        except PatternError:
            return None

    def stage_entity_ids(self, qualname: str) -> list[str]:
        """The ids stage_entities() gives, without building values (one list copy, usually)."""
        stage = self.ws.graph.stages[qualname]
        if len(stage.drivers) == 1:
            inst = self.instances[stage.input(stage.drivers[0]).pattern.key]
            if tuple(stage.entity_vars) == inst.pattern.variables:
                return list(inst.items)  # same variables in the same order: the same ids
        return [eid for eid, _ in self.stage_entities(qualname)]

    def has_entity(self, qualname: str, values: dict[str, str]) -> bool:
        """True when some driver input still binds this entity."""
        stage = self.ws.graph.stages[qualname]
        if not stage.inputs:
            return True
        return any(
            self.instances[stage.input(d).pattern.key].binds(stage.entity_vars, values)
            for d in stage.drivers
        )

    def add_instance(self, key: str, values: dict[str, str], relpath: str | None = None) -> None:
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
            self.add_instance(stage.output.key, ent)

    def discard_instance(self, key: str, values: dict[str, str]) -> None:
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
                self.discard_instance(stage.output.key, ent)
                continue
            m = self.manifests[q].get(entity_id(stage.entity_vars, ent))
            for relpath in m.outputs if m else ():
                item = self.instances[stage.output.key].pattern.match(relpath)
                if item is not None:
                    self.discard_instance(stage.output.key, item)

    # -- recording outcomes -------------------------------------------------------------------
    def record_manifest(self, m: Manifest) -> None:
        """A state was committed: keep its manifest; refresh fan-out instances."""
        old = self.manifests[m.stage].get(m.entity)
        self.manifests[m.stage][m.entity] = m
        self.changed = True
        stage = self.ws.graph.stages[m.stage]
        if stage.fanout_vars:
            key = stage.output.key
            pattern = self.instances[key].pattern
            for relpath in old.outputs if old else ():
                if relpath not in m.outputs:
                    values = pattern.match(relpath)
                    if values is not None:
                        self.discard_instance(key, values)
            for relpath in m.outputs:
                values = pattern.match(relpath)
                if values is not None:
                    self.add_instance(key, values, relpath)
        self.failures[m.stage].pop(m.entity, None)
