"""Gather the facts about a (stage, entity) from the index and decide its state, memoised per pass."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from eventrunner.core.changes import ADDED, CHANGED, PREVIOUS, REMOVED, SAME, changes_inputs
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.core.records import Manifest
from eventrunner.core.staleness import Facts, Verdict, decide
from eventrunner.state.hashing import combine
from eventrunner.state.index import Index

_RECENT_HASHES = 4096  # file hashes an evaluator keeps between resets


@dataclass
class InputFile:
    """One concrete input file of a run: its input name, member key (fan-in), path and hash."""

    name: str
    member: str | None  # entity id over the aggregated variables, None for a map input
    relpath: str
    hash: str
    # An incremental call's mark (core/changes.py): how this member differs from the previous
    # output's manifest; "removed" and "previous" entries are no input of the call's manifest.
    delta: str = ""


@dataclass
class Gathered:
    """Current inputs of a (stage, entity)."""

    files: list[InputFile]
    missing: list[str]
    upstream_not_fresh: list[str]

    def hashes(self) -> dict[str, dict[str, str]]:
        """input name -> {relpath: hash}, as stored in manifests."""
        out: dict[str, dict[str, str]] = {}
        for f in self.files:
            if f.delta not in (REMOVED, PREVIOUS):
                out.setdefault(f.name, {})[f.relpath] = f.hash
        return out


class Evaluator:
    """Decides states against one index; a verdict is computed once per (stage, entity) per pass."""

    def __init__(self, index: Index, now: float | None = None) -> None:
        self.index = index
        self.ws = index.ws
        self.now = time.time() if now is None else now
        self._memo: dict[tuple[str, str], Verdict] = {}
        # File hashes read in this pass: a member's output is read by its producer's verdict
        # and again, just after, as the consumer's input; one stat serves both (the verdicts
        # they feed are memoised for the same span). Bounded: only the recent reads matter.
        self._hashes: dict[str, str | None] = {}

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
        for inp in stage.inputs:
            inst = idx.instances[inp.pattern.key]
            producer = self.ws.graph.producer.get(inp.pattern.key)
            if inp.aggregated:
                key = tuple(values[v] for v in inp.shared)
                members = sorted(inst.select(inp.shared, key))
                pairs = [(inst.values(e), inst.path(e)) for e in members]
            else:
                mv = {v: values[v] for v in inp.pattern.variables}
                eid = entity_id(inp.pattern.variables, mv)
                if eid not in inst.items and producer is None:
                    missing.append(inp.pattern.join(mv))
                    continue
                pairs = [(mv, inst.path(eid) if eid in inst.items else inp.pattern.join(mv))]
            for mvalues, relpath in pairs:
                if producer is not None and check_upstream:
                    pstage = self.ws.graph.stages[producer]
                    pv = {v: mvalues[v] for v in pstage.entity_vars}
                    peid = entity_id(pstage.entity_vars, pv)
                    pverdict = self.verdict(producer, peid, pv)
                    if pverdict.state != "fresh":
                        upstream.append(f"{producer} {peid} ({pverdict.state})")
                        continue
                # A run's own gather (check_upstream=False) reads the files afresh.
                digest = self._hash(relpath) if check_upstream else idx.files.hash(relpath)
                if digest is None:
                    (upstream if producer else missing).append(relpath)
                    continue
                member = (
                    entity_id(inp.aggregated, {v: mvalues[v] for v in inp.aggregated})
                    if inp.aggregated
                    else None
                )
                files.append(InputFile(inp.name, member, relpath, digest))
        return Gathered(files, missing, upstream)

    def verdict(self, qualname: str, eid: str, values: dict[str, str]) -> Verdict:
        """The state of (stage, entity) now."""
        memo = self._memo.get((qualname, eid))
        if memo is not None:
            return memo
        v = decide(self.facts(qualname, eid, values))
        self._memo[(qualname, eid)] = v
        return v

    def facts(self, qualname: str, eid: str, values: dict[str, str]) -> Facts:
        """Everything decide() needs for one state."""
        idx = self.index
        m = idx.manifests[qualname].get(eid)
        failure = idx.failures[qualname].get(eid)
        exists = idx.has_entity(qualname, values)
        g = self.gather(qualname, values) if exists else Gathered([], [], [])
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

    def attempt_key(self, qualname: str, inputs: dict[str, dict[str, str]]) -> str:
        """Identity of an attempt: a failure only counts against the same code, params and inputs.

        The handler's whole module file counts too: a failure in its top-level code (an import,
        a constant) is not part of the code identity, yet fixing it must start afresh.
        """
        flat = sorted((n, p, h) for n, files in inputs.items() for p, h in files.items())
        return combine(
            self.ws.code[qualname],
            self.ws.params[qualname],
            self.ws.modules.get(qualname, ""),
            *("\0".join(t) for t in flat),
        )

    def for_call(
        self,
        qualname: str,
        eid: str,
        values: dict[str, str],
        files: list[InputFile],
        func: Callable[..., Any],
        executor: str = "thread",
    ) -> list[InputFile]:
        """A call's input files, marked for an incremental call (core/changes.py) when the
        handler takes a `Changes` input and its previous output can be trusted; else `files`
        as they are (a full call). O(members) in dict operations, no file is read."""
        names = changes_inputs(func)
        if not names or executor == "dask" or inspect.iscoroutinefunction(func):
            return files  # an incremental call needs the sync path of invoke.prepare_and_call
        previous = self._trusted_previous(qualname, eid, values)
        if previous is None:
            return files
        recorded = previous[1].inputs
        stage = self.ws.graph.stages[qualname]
        out: list[InputFile] = []
        for f in files:
            old = recorded.get(f.name, {}).get(f.relpath)
            if f.name not in names:
                if old != f.hash:
                    return files  # another input changed: the previous output is outdated
                out.append(f)
            else:
                mark = SAME if old == f.hash else CHANGED if old is not None else ADDED
                out.append(replace(f, delta=mark))
        now = {(f.name, f.relpath) for f in files}
        for inp in stage.inputs:
            for relpath, digest in recorded.get(inp.name, {}).items():
                if (inp.name, relpath) in now:
                    continue
                if inp.name not in names:
                    return files  # a member of a dict input went away
                mv = inp.pattern.match(relpath)
                member = (
                    entity_id(inp.aggregated, {v: mv[v] for v in inp.aggregated}) if mv else relpath
                )
                out.append(InputFile(inp.name, member, relpath, digest, REMOVED))
        out.append(InputFile("", None, previous[0], previous[1].outputs[previous[0]], PREVIOUS))
        return out

    def _trusted_previous(
        self, qualname: str, eid: str, values: dict[str, str]
    ) -> tuple[str, Manifest] | None:
        """(output relpath, manifest) of a previous output an incremental call may start from:
        made by today's code and params, not invalidated since, and on disk as recorded (an
        output renamed in place whose manifest a crash kept out reads as edited: not trusted)."""
        stage = self.ws.graph.stages[qualname]
        m = self.index.manifests[qualname].get(eid)
        if m is None or stage.fanout_vars:
            return None
        if m.code != self.ws.code[qualname] or m.params != self.ws.params[qualname]:
            return None
        if self.index.control.invalidated_at(qualname, eid) > m.finished_ns:
            return None
        relpath = stage.output.format(values)
        recorded = m.outputs.get(relpath)
        if recorded is None or self.index.files.hash(relpath) != recorded:
            return None
        return relpath, m
