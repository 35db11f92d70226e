"""What an aggregate (fan-in) state knows of its members between checks, so that a check costs
O(members changed), not O(members) (issue 15).

A fan-in's check walks every member: its producer's verdict and its file's hash. A `Cert` keeps
the outcome of that walk for one aggregate state: each member's file and hash (the `view`, only
of members whose producer was fresh), how the view differs from the aggregate's manifest, and
the members to look at again (`dirty`). Every change reaches the engine as a target to consider
(a file event, a commit, a retry, a reconcile), and `touched` marks dirty every member downstream
of each such target, so a member that is not dirty is as the walk found it. What no target
announces (new definitions, a hold or an invalidation, a manifest the engine did not write)
makes the cert invalid (`Certs.valid`), and the next check walks every member again.

A session that follows only what changed since a stamp (everything was fresh then) seeds the
certs instead (`Certs.seed`): an aggregate's first check takes its manifest's member tables as
the view, with the members its catch-up and later targets marked as dirty, so no check ever
walks every member (issue 15: at 100,000 members that walk took tens of seconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eventrunner.core.graph import Input, Stage
from eventrunner.core.members import Members
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.core.records import Manifest
from eventrunner.core.staleness import Reason
from eventrunner.run.inputfile import member_file
from eventrunner.run.planner import Planner
from eventrunner.state import heap
from eventrunner.state.index import Index

Key = tuple[str, str]  # (input name, member relpath)
_TRIM_FROM = 10_000  # members of a seeded cert from which the freed heap is handed back


def _stamp(m: Manifest | None) -> tuple[Any, ...] | None:
    """Which manifest a cert was made against (a new commit has another finished_ns)."""
    return None if m is None else (m.finished_ns, m.started, m.code, m.params)


@dataclass
class Cert:
    """One aggregate state's members as last checked (see the module docstring)."""

    ws: object
    control: object
    manifest: tuple[Any, ...] | None
    view: dict[Key, Any]  # member -> its InputFile (hash and member id) as last verified
    pending: dict[Key, str | None]  # members where the view differs from the manifest: its hash
    dirty: dict[Key, str] = field(default_factory=dict)  # member -> its instance id, to re-check
    nxt: dict[Key, str | None] | None = None  # as `pending`, against the manifest being committed

    def recorded(self, key: Key, pending: dict[Key, str | None]) -> str | None:
        if key in pending:
            return pending[key]
        f = self.view.get(key)
        return None if f is None else str(f.hash)

    def put(self, key: Key, f: Any | None) -> None:
        """The member now (None: it has no file or is no member any more)."""
        pends = [p for p in (self.pending, self.nxt) if p is not None]
        olds = [self.recorded(key, p) for p in pends]
        if f is None:
            self.view.pop(key, None)
        else:
            self.view[key] = f
        new = None if f is None else f.hash
        for p, old in zip(pends, olds, strict=True):
            if old == new:
                p.pop(key, None)
            else:
                p[key] = old

    def files(self) -> list[Any]:
        """The view's files, in no particular order (an incremental call reads only what
        changed; its worker sorts them if it has to make the call full: invoke.py)."""
        return list(self.view.values())

    def delta(self) -> dict[Key, tuple[str | None, Any | None]]:
        """member -> (hash the manifest records, file now) where they differ: O(changed)."""
        return {key: (old, self.view.get(key)) for key, old in self.pending.items()}

    def input_reasons(self) -> list[Reason]:
        """INPUT_ADDED / INPUT_REMOVED / INPUT_CHANGED against the manifest (as staleness gives)."""
        out: list[Reason] = []
        for name, path in sorted(self.pending):
            old, f = self.pending[(name, path)], self.view.get((name, path))
            if old is None and f is not None:
                detail = {"input": name, "path": path, "new": f.hash}
                out.append(Reason("INPUT_ADDED", f"input {name}: {path} added", detail))
            elif f is None and old is not None:
                detail = {"input": name, "path": path, "old": old}
                out.append(Reason("INPUT_REMOVED", f"input {name}: {path} removed", detail))
            elif f is not None and old != f.hash:
                detail = {"input": name, "path": path, "old": old, "new": f.hash}
                out.append(Reason("INPUT_CHANGED", f"input {name}: {path} changed", detail))
        return out


class Certs:
    """The certs of one engine's aggregate states, and the marking of their dirty members."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.ws = index.ws
        # Seeding (see the module docstring): what it holds for, the members marked per state
        # before its first check, and the states past their first check.
        self._seed: tuple[object, object] | None = None
        self._marks: dict[tuple[str, str], dict[Key, str]] = {}
        self._spent: set[tuple[str, str]] = set()
        graph = index.ws.graph
        self.planner = Planner(index)
        self._certs: dict[tuple[str, str], Cert] = {}
        # producer stage -> the (aggregate stage, input) its outputs are members of
        self.members_of: dict[str, list[tuple[Stage, Input]]] = {}
        for stage in graph.stages.values():
            if _eligible(stage, graph.producer, graph.stages):
                for inp in stage.inputs:
                    producer = graph.producer[inp.pattern.key]
                    self.members_of.setdefault(producer, []).append((stage, inp))
        # stages further upstream of a member producer: their targets are followed downstream
        self._deep: set[str] = set()
        todo = list(self.members_of)
        while todo:
            for up in graph.upstream(todo.pop()):
                if up not in self._deep:
                    self._deep.add(up)
                    todo.append(up)

    def eligible(self, qualname: str) -> bool:
        """True for a stage whose states keep certs."""
        return any(a.qualname == qualname for pairs in self.members_of.values() for a, _ in pairs)

    def valid(self, qualname: str, eid: str, m: Manifest | None) -> Cert | None:
        """The state's cert, if it still holds for the workspace, control and manifest."""
        cert = self._certs.get((qualname, eid))
        if cert is None:
            return self._seeded(qualname, eid, m)
        idx = self.index
        if cert.ws is not idx.ws or cert.control is not idx.control or cert.manifest != _stamp(m):
            del self._certs[(qualname, eid)]
            return None
        return cert

    def seed(self) -> None:
        """Every state was fresh at the stamp this session follows, and each change since then
        reaches touched() as a target: first checks take their view from the manifests."""
        self._seed = (self.index.ws, self.index.control)

    def _seeded(self, qualname: str, eid: str, m: Manifest | None) -> Cert | None:
        """A state's first cert from its manifest's member tables (O(members), no stat and no
        verdict), or None: not seeding, not its first check, or a table that does not read."""
        k = (qualname, eid)
        if self._seed is None or k in self._spent:
            return None
        if self._seed != (self.index.ws, self.index.control):
            self._seed, self._marks = None, {}  # new definitions or control: walks from here on
            return None
        self._spent.add(k)
        marks = self._marks.pop(k, {})
        if m is None:
            return None
        view: dict[Key, Any] = {}
        for inp in self.ws.graph.stages[qualname].inputs:
            table = m.inputs.get(inp.name, {})
            entries = table.table() if isinstance(table, Members) else table
            if isinstance(table, Members) and table.broken:
                return None
            name, fit = inp.name, inp.pattern.recorded_values
            for path, digest in entries.items():
                if (values := fit(path)) is None:
                    return None
                view[(name, path)] = member_file(inp, values, path, digest)
        cert = Cert(self.index.ws, self.index.control, _stamp(m), view, {}, marks)
        self._certs[k] = cert
        if len(view) >= _TRIM_FROM:
            heap.trim()  # the member log's parse left free pages (17 MB at 100,000 members)
        return cert

    def _spend(self, qualname: str, eid: str) -> None:
        """The state is past its first check: no seed for it any more."""
        self._spent.add((qualname, eid))
        self._marks.pop((qualname, eid), None)

    def make(
        self,
        qualname: str,
        eid: str,
        m: Manifest | None,
        files: Iterable[Any],
        dirty: dict[Key, str],
    ) -> Cert:
        """A new cert from a full walk: the files of members found fresh, the others dirty."""
        view = {(f.name, f.relpath): f for f in files}
        pending: dict[Key, str | None] = {}
        recorded = m.inputs if m is not None else {}
        for key, f in view.items():
            old = recorded.get(key[0], {}).get(key[1])
            if old != f.hash:
                pending[key] = old
        for name, paths in recorded.items():
            for path, digest in paths.items():
                if (name, path) not in view:
                    pending[(name, path)] = digest
        cert = Cert(self.index.ws, self.index.control, _stamp(m), view, pending, dict(dirty))
        self._certs[(qualname, eid)] = cert
        self._spend(qualname, eid)
        return cert

    def drop(self, qualname: str, eid: str) -> None:
        """Forget a state's cert (its next check walks every member)."""
        self._certs.pop((qualname, eid), None)
        self._spend(qualname, eid)

    def committed(self, qualname: str, eid: str, m: Manifest) -> None:
        """The aggregate committed `m`, made from the view its run took (Evaluator.gather_for_run)."""
        self._spend(qualname, eid)
        cert = self._certs.get((qualname, eid))
        if cert is None:
            return
        if cert.nxt is None:
            del self._certs[(qualname, eid)]
            return
        cert.manifest, cert.pending, cert.nxt = _stamp(m), cert.nxt, None

    def refresh(self, q: str, eid: str, cert: Cert, files: list[Any]) -> None:
        """A run gathered (and hashed afresh) every member: the cert's view follows, as the
        manifest it commits will; a member found changed with no event for it (an output
        edited by hand: outputs are not watched) is re-checked at the next check."""
        stage = self.ws.graph.stages[q]
        now = {(f.name, f.relpath): f for f in files}
        changed = [k for k in cert.view if k not in now]
        for key in changed:
            cert.put(key, None)
        for key, f in now.items():
            old = cert.view.get(key)
            if old is None or old.hash != f.hash:
                cert.put(key, f)
                changed.append(key)
        for name, relpath in changed:
            inp = stage.input(name)
            mv = inp.pattern.match(relpath)
            if mv is None:
                self.drop(q, eid)
                return
            cert.dirty.setdefault((name, relpath), entity_id(inp.pattern.variables, mv))
        cert.nxt = {}  # the manifest this run commits records the view as it is now

    def touched(self, qualname: str, values: dict[str, str]) -> None:
        """A target is being considered: the members it may change are dirty in their certs."""
        if not self._certs and self._seed is None:
            return
        if qualname in self.members_of:
            self._mark(qualname, values)
        if qualname in self._deep:
            for q, _eid, v in self.planner.descendants(qualname, values):
                if q in self.members_of:
                    self._mark(q, v)

    def _mark(self, producer: str, values: dict[str, str]) -> None:
        for agg, inp in self.members_of[producer]:
            mv = {v: values[v] for v in inp.pattern.variables}
            aeid = entity_id(agg.entity_vars, {v: values[v] for v in agg.entity_vars})
            k = (agg.qualname, aeid)
            cert = self._certs.get(k)
            if cert is not None:
                cert.dirty[(inp.name, inp.pattern.join(mv))] = entity_id(inp.pattern.variables, mv)
            elif self._seed is not None and k not in self._spent:
                marks = self._marks.setdefault(k, {})
                marks[(inp.name, inp.pattern.join(mv))] = entity_id(inp.pattern.variables, mv)


def _eligible(stage: Stage, producer: dict[str, str], stages: dict[str, Stage]) -> bool:
    """Certs cover a fan-in whose inputs are all aggregated and made by map stages (a source
    member's change reaches the engine as no target of its own)."""
    if stage.fanout_vars or not stage.inputs:
        return False
    for inp in stage.inputs:
        p = producer.get(inp.pattern.key)
        if not inp.aggregated or p is None or stages[p].fanout_vars:
            return False
    return True
