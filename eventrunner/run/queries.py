"""Read-only questions about a workspace's states, asked by the CLI and the HTTP API alike:
which stages a selection names, per-stage counts, listings and explanations.

The reading half of the management layer (management.py changes state); nothing here writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eventrunner.core.errors import UnknownName, UsageError, did_you_mean
from eventrunner.core.graph import Graph
from eventrunner.core.staleness import STATES, Verdict
from eventrunner.core.tracebacks import handler_frames
from eventrunner.run.evaluate import Evaluator
from eventrunner.state.index import Index


@dataclass
class Row:
    """One state with its reasons."""

    stage: str
    entity: str
    values: dict[str, str]
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        """Plain data for --json and the API; a failed state has its next retry time too
        (`retry_at`, epoch seconds: passed while the retry is due or running)."""
        out: dict[str, Any] = {
            "stage": self.stage,
            "entity": self.entity,
            "state": self.verdict.state,
            "reasons": [r.to_json() for r in self.verdict.reasons],
        }
        first = self.verdict.reasons[0] if self.verdict.reasons else None
        if self.verdict.state == "failed" and first is not None and "retry_at" in first.detail:
            out["retry_at"] = first.detail["retry_at"]
        return out


def resolve_stages(graph: Graph, stage: str | None, pipeline: str | None = None) -> list[str]:
    """Stage qualnames for a --stage/--pipeline selection; UnknownName when nothing matches."""
    g = graph
    if pipeline is not None and pipeline not in g.pipelines:
        raise UnknownName(
            f"no pipeline {pipeline!r}{did_you_mean(pipeline, g.pipelines)} "
            f"(have: {', '.join(sorted(g.pipelines)) or 'none'})"
        )
    if stage is None:
        return [q for q in g.order if pipeline is None or g.stages[q].pipeline == pipeline]
    found = g.find_stage(stage, pipeline)
    if not found:
        raise UnknownName(
            f"no stage {stage!r}"
            + (f" in pipeline {pipeline!r}" if pipeline else "")
            + _suggest_stage(g, stage, pipeline)
        )
    if len(found) > 1:
        raise UsageError(
            f"stage name {stage!r} is ambiguous: {', '.join(found)}; use pipeline.stage"
        )
    return found


def _suggest_stage(g: Graph, stage: str, pipeline: str | None) -> str:
    """Did you mean: bare names against bare names; `p.typo` against the stages of p."""
    p, dot, name = stage.rpartition(".")
    if dot and p in g.pipelines:
        names = [g.stages[q].name for q in g.pipelines[p]]
        return did_you_mean(name, names, prefix=f"{p}.")
    return did_you_mean(
        stage, [s.name for s in g.stages.values() if pipeline in (None, s.pipeline)]
    )


def state_ids(index: Index, qualname: str) -> list[str]:
    """Entity ids of one stage's states in listing order: its entities, then orphaned states.
    Cheap (no evaluation), so a page of a listing need evaluate only its own rows."""
    ids = index.stage_entity_ids(qualname)
    known = set(ids)
    ids += [eid for eid in index.manifests[qualname] if eid not in known]
    return ids


def iter_rows(index: Index, stages: list[str], evaluator: Evaluator | None = None) -> Iterator[Row]:
    """Every state of the given stages (orphaned ones included), upstream first."""
    ev = evaluator or Evaluator(index)
    for q in stages:
        seen: set[str] = set()
        for eid, values in index.stage_entities(q):
            seen.add(eid)
            yield Row(q, eid, values, ev.verdict(q, eid, values))
        for eid, m in index.manifests[q].items():
            if eid not in seen:
                yield Row(q, eid, m.values, ev.verdict(q, eid, m.values))


def status(
    index: Index,
    pipeline: str | None = None,
    counts: dict[str, dict[str, int]] | None = None,
    failed: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Per-stage counts by state: {"pipelines": {P: {"stages": {S: {state: n}}}}}, plus per
    pipeline `next_retry` {S: epoch seconds}, the earliest retry of a stage's failed states
    (only when there is one). Evaluates every state unless `counts` (stage -> state -> n) and
    `failed` (stage -> entity ids of its failed states) come from elsewhere (serve's table)."""
    g = index.ws.graph
    stages = resolve_stages(g, None, pipeline)
    if counts is None:
        tally: dict[str, Counter[str]] = {q: Counter() for q in stages}
        failed = {q: [] for q in stages}
        for row in iter_rows(index, stages):
            tally[row.stage][row.verdict.state] += 1
            if row.verdict.state == "failed":
                failed[row.stage].append(row.entity)
        counts = {q: dict(c) for q, c in tally.items()}
    retries = next_retries(index, failed or {})
    out: dict[str, Any] = {"pipelines": {}}
    for p in sorted(g.pipelines):
        if pipeline is not None and p != pipeline:
            continue
        out["pipelines"][p] = {
            "stages": {
                g.stages[q].name: {s: counts[q].get(s, 0) for s in STATES} for q in g.pipelines[p]
            }
        }
        if due := {g.stages[q].name: retries[q] for q in g.pipelines[p] if q in retries}:
            out["pipelines"][p]["next_retry"] = due
    return out


def next_retries(index: Index, failed: dict[str, list[str]]) -> dict[str, float]:
    """stage -> the earliest retry time among the given failed states (O(those states))."""
    out: dict[str, float] = {}
    for q, eids in failed.items():
        fails = index.failures.get(q, {})
        times = [f.next_retry for e in eids if (f := fails.get(e)) and f.next_retry is not None]
        if times:
            out[q] = min(times)
    return out


def entities(
    index: Index,
    *,
    pipeline: str | None = None,
    stage: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Row]:
    """States filtered by pipeline, stage and state, paged."""
    if state is not None and state not in STATES:
        raise UsageError(f"unknown state {state!r} (one of {', '.join(STATES)})")
    rows = [
        r
        for r in iter_rows(index, resolve_stages(index.ws.graph, stage, pipeline))
        if state is None or r.verdict.state == state
    ]
    return rows[offset : None if limit is None else offset + limit]


def entity_values(index: Index, q: str, eid: str) -> dict[str, str] | None:
    """The values of an entity id the stage has now (or has a state for); else None."""
    values = index.values_or_none(q, eid)
    if values is not None and (index.has_entity(q, values) or eid in index.manifests[q]):
        return values
    return None


def explain(
    index: Index, eid: str, stage: str | None = None, pipeline: str | None = None
) -> list[dict[str, Any]]:
    """For every stage that has this entity: state, reasons, manifest, last failure."""
    ev = Evaluator(index)
    out = []
    handlers = f"{index.ws.settings.handlers_dir}/"

    def mine(name: str) -> bool:
        return name.startswith(handlers)

    for q in resolve_stages(index.ws.graph, stage, pipeline):
        values = entity_values(index, q, eid)
        if values is None:
            continue
        m = index.manifests[q].get(eid)
        f = index.failures[q].get(eid)
        row = Row(q, eid, values, ev.verdict(q, eid, values)).to_json()
        row["manifest"] = m.to_json() if m else None
        row["failure"] = f.to_json() if f else None
        if f is not None:  # the traceback's lines in the user's own handler files
            frames = handler_frames(f.traceback, mine)
            row["failure"]["handler_frames"] = [fr.to_json() for fr in frames]
        out.append(row)
    if not out:
        raise UnknownName(f"no stage has entity {eid!r}")
    return out


def last_output(index: Index, stage: str, eid: str, pipeline: str | None = None) -> dict[str, Any]:
    """What the last attempt of (stage, entity) printed and logged (`eventrunner logs`), read
    from the store: `output` is "" when that attempt printed nothing or none has run yet."""
    q = resolve_stages(index.ws.graph, stage, pipeline)[0]  # one, or UnknownName/UsageError
    if entity_values(index, q, eid) is None and eid not in index.failures[q]:
        hint = did_you_mean(eid, state_ids(index, q))
        raise UnknownName(f"stage {q} has no entity {eid!r}{hint}")
    store = index.store
    manifest, failure = store.read_manifest(q, eid), store.read_failure(q, eid)
    out: dict[str, Any] = {"stage": q, "entity": eid, "attempt": None, "outcome": None}
    if failure is not None:
        out.update(attempt=failure.attempts, outcome="failed", at=failure.last_failed)
    elif manifest is not None:
        out.update(attempt=manifest.attempt, outcome="succeeded", at=manifest.started)
    found = store.read_output(q, eid)
    out["output"] = found.text if found is not None and found.belongs_to(manifest, failure) else ""
    return out
