"""Steering a running server: management calls (invalidate, retry, hold, release) and `run`.

The HTTP API calls these on the event loop; the CLI reaches them through the API while `serve`
holds the workspace. Each re-checks only what the call touched.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from eventrunner.core.errors import UnknownName, UsageError
from eventrunner.run import management as ops
from eventrunner.run.events import Event, Failed, Managed, Pruned, Started, Succeeded
from eventrunner.run.planner import Target

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime


async def run_request(rt: Runtime, stages: list[str], entity: str | None) -> dict[str, Any]:
    """`eventrunner run` while serving: check the selection now, wait until nothing is queued
    or running, and report what ran meanwhile (the server's other work included)."""
    assert rt.engine is not None and rt.index is not None
    began = time.perf_counter()
    counts: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []

    def tally(event: Event) -> None:
        if isinstance(event, Started | Succeeded | Failed):
            counts[event.kind.value] += 1
        if isinstance(event, Failed):
            failures.append({"stage": event.stage, "entity": event.entity, "error": event.error})

    planner = rt.engine.planner
    selected = [(q, e) for q in stages for e in rt.index.stage_entity_ids(q) if entity in (None, e)]
    if entity is not None and not selected:
        raise UnknownName(f"no selected stage has entity {entity!r}")
    blocked: set[tuple[str, str]] = set()
    rt.events.subscribe(tally)
    try:
        # Like a local run: files the watcher has not delivered (or no watcher) count too.
        removed = [t for t in await rt.rescan() if t[0] in stages]
        targets = (
            planner.iter_targets(stages)
            if entity is None
            else ((q, e, rt.index.entity_values(q, e)) for q, e in selected)
        )
        await rt.engine.consider_async(itertools.chain(removed, targets), blocked=blocked)
        # Skipped: selected states the pass found held, failed or dead (not run).
        skipped = len(blocked)
        await rt.engine.wait_idle()
    finally:
        rt.events.unsubscribe(tally)
    return {
        "executed": counts["started"],
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "skipped": skipped,
        "duration_s": round(time.perf_counter() - began, 3),
        "failures": failures,
        "mode": "server",
    }


def manage(rt: Runtime, action: str, body: dict[str, Any]) -> Any:
    """invalidate / retry / hold / release, then queue what became runnable."""
    assert rt.engine is not None and rt.index is not None
    rt.unstamp()  # holds, invalidations, retries: let the next start evaluate fully
    idx, store = rt.index, rt.store
    stage: str | None = body.get("stage")
    eids: list[str] | None = body.get("entities") or None
    # Only what the call touched is checked again: whole stages when no entity was named.
    whole: list[str] = []
    pairs: list[tuple[str, str]] = []
    if action == "invalidate":
        result = ops.invalidate(
            idx, store, _required(stage), eids, bool(body.get("downstream")), save=False
        )
        if eids:
            pairs = [(result["stages"][0], e) for e in result["entities"]]
            pairs += [(d["stage"], d["entity"]) for d in result["downstream"]]
        else:
            whole = result["stages"]
    elif action == "retry":
        result = ops.retry(idx, store, stage, eids, save=False)
        pairs = [(c["stage"], c["entity"]) for c in result["cleared"]]
    elif action in ("hold", "release"):
        result = ops.hold(idx, store, _required(stage), eids, on=action == "hold", save=False)
        if eids:
            pairs = [(result["stage"], e) for e in result["entities"]]
        else:
            whole = [result["stage"]]
    else:
        raise ValueError(action)
    targets: list[Target] = [(q, e, v) for q in whole for e, v in idx.stage_entities(q)]
    for q, e in pairs:
        values = idx.values_or_none(q, e)
        if values is not None:
            targets.append((q, e, values))
    rt.engine.consider(targets)
    rt.events.emit(Managed(action=action))  # holds, invalidations: states recounted
    return result


def prune(rt: Runtime, dry_run: bool) -> dict[str, Any]:
    """Delete orphaned states' outputs and manifests while serving (see ops.prune): on the loop,
    so no event interleaves; the index cache follows with the persist loop."""
    assert rt.index is not None
    rt.unstamp()
    pruned = ops.prune(rt.index, rt.store, dry_run=dry_run, save=False)
    if pruned and not dry_run:
        rt.events.emit(Pruned(states=len(pruned)))
    return {"pruned": pruned, "dry_run": dry_run}


def _required(stage: str | None) -> str:
    if not stage:
        raise UsageError("stage is required")
    return stage
