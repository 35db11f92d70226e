"""Gather the facts about a (stage, entity) from the index and decide its state, memoised per pass."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventrunner.core.changes import PREVIOUS, REMOVED
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.core.records import Manifest
from eventrunner.core.staleness import Facts, Verdict, decide
from eventrunner.run import membertables
from eventrunner.run.aggregates import Cert, Certs
from eventrunner.run.inputfile import InputFile, in_walk_order, member_file
from eventrunner.state.hashing import combine
from eventrunner.state.index import Index

_RECENT_HASHES = 4096  # file hashes an evaluator keeps between resets


@dataclass
class Gathered:
    """Current inputs of a (stage, entity)."""

    files: list[InputFile]
    missing: list[str]
    upstream_not_fresh: list[str]
    # fan-in members left out as their producer is not fresh (or their file is missing):
    # (input name, relpath) -> instance id; an aggregate's cert re-checks them (run/aggregates.py)
    unverified: dict[tuple[str, str], str] = field(default_factory=dict)
    _hashes: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def hashes(self) -> dict[str, Mapping[str, str]]:
        """input name -> {relpath: hash}, as stored in manifests (built once: a run asks for
        it twice, and an aggregate's is one entry per member; a run from a cert has member
        tables, core/members.py, made from the changes alone)."""
        if self._hashes is None:
            out: dict[str, Any] = {}
            for f in self.files:
                if f.delta not in (REMOVED, PREVIOUS):
                    out.setdefault(f.name, {})[f.relpath] = f.hash
            self._hashes = out
        return self._hashes


class Evaluator:
    """Decides states against one index; a verdict is computed once per (stage, entity) per pass."""

    def __init__(self, index: Index, now: float | None = None) -> None:
        self.index = index
        self.ws = index.ws
        self.now = time.time() if now is None else now
        self._memo: dict[tuple[str, str], Verdict] = {}
        # File hashes read in this pass (a member's output is read by its producer's verdict,
        # then as the consumer's input: one stat serves both). Bounded: recent reads matter.
        self._hashes: dict[str, str | None] = {}
        self.certs = Certs(index)  # kept across passes: what aggregates know of their members
        self._cert_stages = {q for q in self.ws.graph.stages if self.certs.eligible(q)}

    def reset(self, now: float | None = None) -> None:
        """Forget memoised verdicts and file hashes (state changed)."""
        self._memo.clear()
        self._hashes.clear()
        self.now = time.time() if now is None else now

    def written(self, hashes: dict[str, str]) -> None:
        """Files a commit just put in place, with their hashes: this pass need not stat them
        again (their producer's verdict and their readers' inputs both read them)."""
        if len(self._hashes) + len(hashes) > _RECENT_HASHES:
            self._hashes.clear()
        self._hashes.update(hashes)

    def _hash(self, relpath: str) -> str | None:
        try:
            return self._hashes[relpath]
        except KeyError:
            if len(self._hashes) >= _RECENT_HASHES:
                self._hashes.clear()
            digest = self._hashes[relpath] = self.index.files.hash(relpath)
            return digest

    @property
    def memo_size(self) -> int:
        """Verdicts memoised in this pass."""
        return len(self._memo)

    def forget(self, qualname: str, eid: str) -> None:
        """Forget one memoised verdict."""
        self._memo.pop((qualname, eid), None)

    def gather(
        self, qualname: str, values: dict[str, str], check_upstream: bool = True
    ) -> Gathered:
        """Find the input files of an entity, their hashes, and (optionally) which producers are not fresh."""
        stage = self.ws.graph.stages[qualname]
        idx = self.index
        files: list[InputFile] = []
        missing: list[str] = []
        upstream: list[str] = []
        unverified: dict[tuple[str, str], str] = {}
        for inp in stage.inputs:
            inst = idx.instances[inp.pattern.key]
            producer = self.ws.graph.producer.get(inp.pattern.key)
            if inp.aggregated:
                key = tuple(values[v] for v in inp.shared)
                members = sorted(inst.select(inp.shared, key))
                pairs = [(e, inst.values(e), inst.path(e)) for e in members]
            else:
                mv = {v: values[v] for v in inp.pattern.variables}
                eid = entity_id(inp.pattern.variables, mv)
                if eid not in inst.items and producer is None:
                    missing.append(inp.pattern.join(mv))
                    continue
                pairs = [(eid, mv, inst.path(eid) if eid in inst.items else inp.pattern.join(mv))]
            for ieid, mvalues, relpath in pairs:
                if producer is not None and check_upstream:
                    pstage = self.ws.graph.stages[producer]
                    pv = {v: mvalues[v] for v in pstage.entity_vars}
                    peid = entity_id(pstage.entity_vars, pv)
                    pverdict = self.verdict(producer, peid, pv)
                    if pverdict.state != "fresh":
                        upstream.append(f"{producer} {peid} ({pverdict.state})")
                        unverified[(inp.name, relpath)] = ieid
                        continue
                # A run's own gather (check_upstream=False) reads the files afresh.
                digest = self._hash(relpath) if check_upstream else idx.files.hash(relpath)
                if digest is None:
                    (upstream if producer else missing).append(relpath)
                    unverified[(inp.name, relpath)] = ieid
                    continue
                files.append(
                    member_file(inp, mvalues, relpath, digest)
                    if inp.aggregated
                    else InputFile(inp.name, None, relpath, digest)
                )
        return Gathered(files, missing, upstream, unverified)

    def verdict(
        self, qualname: str, eid: str, values: dict[str, str], incremental: bool = False
    ) -> Verdict:
        """The state of (stage, entity) now. `incremental` (the engine's checks): an aggregate
        keeps a cert of its members between checks and re-checks only those marked since."""
        memo = self._memo.get((qualname, eid))
        if memo is not None:
            return memo
        if incremental and qualname in self._cert_stages:
            v = self._aggregate_verdict(qualname, eid, values)
        else:
            v = decide(self.facts(qualname, eid, values))
        self._memo[(qualname, eid)] = v
        return v

    def touched(self, qualname: str, values: dict[str, str]) -> None:
        """A target is being considered: aggregate members downstream of it are re-checked."""
        self.certs.touched(qualname, values)

    def committed(self, qualname: str, eid: str, manifest: Manifest) -> None:
        """A state committed `manifest` (an aggregate's cert moves on to it)."""
        self.certs.committed(qualname, eid, manifest)

    def facts(
        self,
        qualname: str,
        eid: str,
        values: dict[str, str],
        gathered: list[Gathered] | None = None,
    ) -> Facts:
        """Everything decide() needs for one state (the inputs found go into `gathered`)."""
        idx = self.index
        m = idx.manifests[qualname].get(eid)
        failure = idx.failures[qualname].get(eid)
        exists = idx.has_entity(qualname, values)
        g = self.gather(qualname, values) if exists else Gathered([], [], [])
        if gathered is not None and exists:
            gathered.append(g)
        inputs = g.hashes()
        recorded = m.output_paths if m else ()
        outputs_now = {p: self._hash(p) for p in recorded}
        if m is not None and not recorded and not self.ws.graph.stages[qualname].fanout_vars:
            outputs_now = {self.ws.graph.stages[qualname].output.join(values): None}
        return Facts(
            manifest=m,
            code=self.ws.code[qualname],
            params=self.ws.params[qualname],
            inputs=inputs,
            missing_inputs=g.missing,
            upstream_not_fresh=g.upstream_not_fresh,
            outputs_now=outputs_now,
            failure=failure,
            attempt_key=self.attempt_key(qualname, inputs) if failure is not None else "",
            held=idx.control.held(qualname, eid),
            invalidated_ns=idx.control.invalidated_at(qualname, eid),
            running=(qualname, eid) in idx.running,
            exists=exists,
            now=self.now,
        )

    def attempt_key(self, qualname: str, inputs: Mapping[str, Mapping[str, str]]) -> str:
        """Identity of an attempt: a failure only counts against the same code, params and inputs.

        The handler's whole module file counts too: a failure in its top-level code (an import,
        a constant) is not part of the code identity, yet fixing it must start afresh. An
        aggregated input counts by its member digest (O(1) from a member table).
        """
        stage = self.ws.graph.stages[qualname]
        flat = sorted(
            (n, p, h)
            for n, files in inputs.items()
            if not stage.input(n).aggregated
            for p, h in files.items()
        )
        flat += [
            (inp.name, "*", membertables.digest_of(inputs.get(inp.name, {})))
            for inp in stage.inputs
            if inp.aggregated
        ]
        return combine(
            self.ws.code[qualname],
            self.ws.params[qualname],
            self.ws.modules.get(qualname, ""),
            *("\0".join(t) for t in flat),
        )

    # -- aggregates: a check and a run's gather from the cert (run/aggregates.py) ----------------
    def _aggregate_verdict(self, qualname: str, eid: str, values: dict[str, str]) -> Verdict:
        m = self.index.manifests[qualname].get(eid)
        cert = self.certs.valid(qualname, eid, m)
        if cert is not None:
            v = self._cert_verdict(qualname, eid, values, cert, m)
            if v is not None:
                return v
        got: list[Gathered] = []
        facts = self.facts(qualname, eid, values, got)  # the full walk: O(members)
        if got:
            self.certs.make(qualname, eid, m, got[0].files, got[0].unverified)
        else:
            self.certs.drop(qualname, eid)
        return decide(facts)

    def _cert_verdict(
        self, q: str, eid: str, values: dict[str, str], cert: Cert, m: Manifest | None
    ) -> Verdict | None:
        """decide() from the cert, re-checking its dirty members only; None: walk them all."""
        idx = self.index
        if (q, eid) in idx.running:
            return Verdict("running")
        if idx.failures[q].get(eid) is not None or idx.control.held(q, eid):
            return None  # rare: the full walk also gives the attempt key and held's reasons
        if not idx.has_entity(q, values):
            return None
        upstream: list[str] = []
        for key, ieid in list(cert.dirty.items()):
            why = self._verify(q, cert, key, ieid)
            if why == "":
                self.certs.drop(q, eid)
                return None
            if why is None:
                del cert.dirty[key]
            else:
                upstream.append(why)
        stage = self.ws.graph.stages[q]
        recorded = m.output_paths if m else ()
        outputs_now = {p: self._hash(p) for p in recorded}
        if m is not None and not recorded:
            outputs_now = {stage.output.join(values): None}
        facts = Facts(
            manifest=m,
            code=self.ws.code[q],
            params=self.ws.params[q],
            inputs={},
            missing_inputs=[],
            upstream_not_fresh=sorted(upstream),
            outputs_now=outputs_now,
            failure=None,
            attempt_key="",
            invalidated_ns=idx.control.invalidated_at(q, eid),
            now=self.now,
        )
        return decide(facts, cert.input_reasons())

    def _verify(self, q: str, cert: Cert, key: tuple[str, str], ieid: str) -> str | None:
        """Check one dirty member as the full walk would: None when done (fresh, or no member
        any more), else why it waits ("": the cert no longer fits the index)."""
        name, relpath = key
        inp = self.ws.graph.stages[q].input(name)
        inst = self.index.instances[inp.pattern.key]
        if ieid not in inst.items:
            cert.put(key, None)
            return None
        if inst.path(ieid) != relpath:
            return ""
        producer = self.ws.graph.producer[inp.pattern.key]
        pstage = self.ws.graph.stages[producer]
        mvalues = inst.values(ieid)
        pv = {v: mvalues[v] for v in pstage.entity_vars}
        peid = entity_id(pstage.entity_vars, pv)
        state = self.verdict(producer, peid, pv).state
        if state != "fresh":
            return f"{producer} {peid} ({state})"
        digest = self._hash(relpath)
        if digest is None:
            return relpath
        cert.put(key, member_file(inp, mvalues, relpath, digest))
        return None

    def gather_for_run(
        self,
        qualname: str,
        eid: str,
        values: dict[str, str],
        from_cert: bool = False,
        incremental: bool = True,
    ) -> Gathered:
        """A run's input files (gather without the upstream checks, which consider() just
        made), each hashed afresh. `from_cert`: an aggregate with a cert re-reads only its
        dirty members; for a full call (not `incremental`) in the order of a full walk."""
        cert = None
        if qualname in self._cert_stages:
            cert = self.certs.valid(qualname, eid, self.index.manifests[qualname].get(eid))
        if cert is None or not from_cert:
            g = self.gather(qualname, values, check_upstream=False)
            if cert is not None:
                self.certs.refresh(qualname, eid, cert, g.files)
            return g
        stage = self.ws.graph.stages[qualname]
        for (name, relpath), ieid in cert.dirty.items():
            inp = stage.input(name)
            inst = self.index.instances[inp.pattern.key]
            if ieid in inst.items and inst.path(ieid) != relpath:
                self.certs.drop(qualname, eid)
                return self.gather(qualname, values, check_upstream=False)
            digest = self.index.files.hash(relpath) if ieid in inst.items else None
            if digest is None:
                cert.put((name, relpath), None)
                continue
            cert.put((name, relpath), member_file(inp, inst.values(ieid), relpath, digest))
        cert.nxt = {}  # the manifest this run commits records the view as it is now
        files = cert.files()
        if not incremental:
            in_walk_order(files, [inp.name for inp in stage.inputs])
        g = Gathered(files, [], [])
        m = self.index.manifests[qualname].get(eid)
        now = {key: cert.view.get(key) for key in cert.pending}
        g._hashes = membertables.from_changes(
            self.index, stage, eid, m, cert.pending, now, cert.view
        )
        return g

    def run_inputs(
        self, q: str, eid: str, gathered: Gathered, read: dict[str, dict[str, str]] | None
    ) -> dict[str, Mapping[str, str]]:
        """What a run's manifest records: what it gathered, or, when its worker made the call
        full, what the worker read (an aggregate's cert no longer matches that manifest); an
        aggregated input as a member table (core/members.py)."""
        inputs: Mapping[str, Mapping[str, str]] = gathered.hashes()
        if read is not None:
            self.certs.drop(q, eid)
            inputs = read
        stage = self.ws.graph.stages[q]
        if not any(inp.aggregated for inp in stage.inputs):
            return dict(inputs)
        m = self.index.manifests[q].get(eid)
        return membertables.by_reference(self.index, stage, eid, m, inputs)
