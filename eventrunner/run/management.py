"""Operations on a workspace, shared by the CLI and the HTTP API (no logic written twice)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventrunner.core.errors import UnknownName, UsageError
from eventrunner.core.patterns import parse_entity_id
from eventrunner.core.staleness import STATES, Verdict
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.planner import Planner
from eventrunner.state.files import remove_path
from eventrunner.state.index import Index
from eventrunner.state.store import Store


@dataclass
class Row:
    """One state with its reasons."""

    stage: str
    entity: str
    values: dict[str, str]
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        """Plain data for --json and the API."""
        return {
            "stage": self.stage,
            "entity": self.entity,
            "state": self.verdict.state,
            "reasons": [r.to_json() for r in self.verdict.reasons],
        }


def resolve_stages(index: Index, stage: str | None, pipeline: str | None = None) -> list[str]:
    """Stage qualnames for a --stage/--pipeline selection; UnknownName when nothing matches."""
    g = index.ws.graph
    if pipeline is not None and pipeline not in g.pipelines:
        raise UnknownName(
            f"no pipeline {pipeline!r} (have: {', '.join(sorted(g.pipelines)) or 'none'})"
        )
    if stage is None:
        return [q for q in g.order if pipeline is None or g.stages[q].pipeline == pipeline]
    found = g.find_stage(stage, pipeline)
    if not found:
        raise UnknownName(
            f"no stage {stage!r}" + (f" in pipeline {pipeline!r}" if pipeline else "")
        )
    if len(found) > 1:
        raise UsageError(
            f"stage name {stage!r} is ambiguous: {', '.join(found)}; use pipeline.stage"
        )
    return found


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
    index: Index, pipeline: str | None = None, counts: dict[str, dict[str, int]] | None = None
) -> dict[str, Any]:
    """Per-stage counts by state: {"pipelines": {P: {"stages": {S: {state: n}}}}}; evaluates
    every state unless `counts` (stage -> state -> n) come from elsewhere (serve's StateTable)."""
    stages = resolve_stages(index, None, pipeline)
    if counts is None:
        tally: dict[str, Counter[str]] = {q: Counter() for q in stages}
        for row in iter_rows(index, stages):
            tally[row.stage][row.verdict.state] += 1
        counts = {q: dict(c) for q, c in tally.items()}
    out: dict[str, Any] = {"pipelines": {}}
    g = index.ws.graph
    for p in sorted(g.pipelines):
        if pipeline is not None and p != pipeline:
            continue
        out["pipelines"][p] = {
            "stages": {
                g.stages[q].name: {s: counts[q].get(s, 0) for s in STATES} for q in g.pipelines[p]
            }
        }
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
        for r in iter_rows(index, resolve_stages(index, stage, pipeline))
        if state is None or r.verdict.state == state
    ]
    return rows[offset : None if limit is None else offset + limit]


def _entity_values(index: Index, q: str, eid: str) -> dict[str, str] | None:
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
    for q in resolve_stages(index, stage, pipeline):
        values = _entity_values(index, q, eid)
        if values is None:
            continue
        m = index.manifests[q].get(eid)
        f = index.failures[q].get(eid)
        row = Row(q, eid, values, ev.verdict(q, eid, values)).to_json()
        row["manifest"] = m.to_json() if m else None
        row["failure"] = f.to_json() if f else None
        out.append(row)
    if not out:
        raise UnknownName(f"no stage has entity {eid!r}")
    return out


def _targets(index: Index, q: str, eids: list[str] | None) -> list[str]:
    if not eids:
        return ["*"]
    for eid in eids:
        if _entity_values(index, q, eid) is None:
            raise UnknownName(f"stage {q} has no entity {eid!r}")
    return list(eids)


def _save(index: Index, save: bool) -> None:
    # serve passes save=False: its persist loop saves off the event loop (the index is marked
    # dirty until then, so a crash rebuilds from the store instead of trusting the cache).
    if save:
        index.save()


def invalidate(
    index: Index,
    store: Store,
    stage: str,
    eids: list[str] | None = None,
    downstream: bool = False,
    *,
    save: bool = True,
) -> dict[str, Any]:
    """Mark states stale (INVALIDATED); with downstream, every state that reads them too."""
    q0 = resolve_stages(index, stage)[0]
    targets = _targets(index, q0, eids)
    now = time.time_ns()
    control = index.control.copy()
    inv = control.invalidations
    below: list[dict[str, str]] = []
    if targets == ["*"]:
        stages = [q0, *(index.ws.graph.closure_downstream(q0) if downstream else [])]
        for q in stages:
            inv.setdefault(q, {})["*"] = now
    else:
        for eid in targets:
            inv.setdefault(q0, {})[eid] = now
        if downstream:
            # Exactly the descendants of these entities (fan-in, fan-out and shared inputs
            # followed through the index), not the downstream stages whole.
            planner, seen = Planner(index), set()
            for eid in targets:
                values = _entity_values(index, q0, eid) or {}
                for q, e, _ in planner.descendants(q0, values):
                    if (q, e) not in seen:
                        seen.add((q, e))
                        inv.setdefault(q, {})[e] = now
                        below.append({"stage": q, "entity": e})
        order = {q: i for i, q in enumerate(index.ws.graph.order)}
        stages = [q0, *sorted({d["stage"] for d in below}, key=order.__getitem__)]
    index.set_control(control)  # durable here; the index cache follows (save or later)
    _save(index, save)
    return {"stages": stages, "entities": targets, "downstream": below}


def retry(
    index: Index,
    store: Store,
    stage: str | None = None,
    eids: list[str] | None = None,
    *,
    save: bool = True,
) -> dict[str, Any]:
    """Clear backoff and dead states so they run at the next opportunity."""
    cleared = []
    for q in resolve_stages(index, stage):
        wanted = set(eids) if eids else None
        for eid in list(index.failures[q]):
            if (wanted is None or eid in wanted) and index.clear_failure(q, eid):
                cleared.append({"stage": q, "entity": eid})
    if cleared:
        _save(index, save)
    return {"cleared": cleared}


def hold(
    index: Index,
    store: Store,
    stage: str,
    eids: list[str] | None = None,
    on: bool = True,
    *,
    save: bool = True,
) -> dict[str, Any]:
    """Put states on manual hold (on=True) or release them."""
    q = resolve_stages(index, stage)[0]
    targets = _targets(index, q, eids)
    control = index.control.copy()
    current = set(control.holds.get(q, []))
    if on:
        current |= set(targets)
    elif targets == ["*"]:
        current.clear()
    else:
        current -= set(targets)
    if current:
        control.holds[q] = sorted(current)
    else:
        control.holds.pop(q, None)
    index.set_control(control)
    _save(index, save)
    return {"stage": q, "entities": targets, "held": on}


def _delete_outputs(index: Index, relpaths: Sequence[str]) -> None:
    for relpath in relpaths:
        remove_path(index.root / relpath)
        index.file_removed(relpath)


def prune(
    index: Index, store: Store, dry_run: bool = False, *, save: bool = True
) -> list[dict[str, Any]]:
    """Delete outputs and manifests of orphaned states, and fan-out outputs no longer produced."""
    out: list[dict[str, Any]] = []
    for q in index.ws.graph.order:
        for eid, _f in list(index.failures[q].items()):
            if eid not in index.manifests[q] and not index.has_entity(
                q, parse_entity_id(index.ws.graph.stages[q].entity_vars, eid)
            ):
                out.append({"stage": q, "entity": eid, "outputs": []})
                if not dry_run:
                    index.clear_failure(q, eid)
        for eid, m in list(index.manifests[q].items()):
            if index.has_entity(q, m.values):
                if m.dropped:
                    out.append({"stage": q, "entity": eid, "outputs": list(m.dropped)})
                    if not dry_run:
                        _delete_outputs(index, m.dropped)
                        index.outputs_pruned(q, eid)
                continue
            out.append({"stage": q, "entity": eid, "outputs": sorted(m.outputs)})
            if dry_run:
                continue
            _delete_outputs(index, [*m.outputs, *m.dropped])
            index.forget_state(q, eid)
    if out and not dry_run:
        index.derive()
        _save(index, save)
    return out
