"""The management layer, shared by the CLI and the HTTP API: invalidate, retry, hold, release,
prune and `run` on a held workspace.

The operations work on the index and the store; the entry points (`manage`, `prune_orphans`,
`run_selection`) take the Session that holds the workspace — the CLI's own under the lock, or
serve's, where each call also re-checks only what it touched and tells listeners. The read-only
half (status, listings, explain) is queries.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from eventrunner.core.errors import ShuttingDown, UnknownName, UsageError
from eventrunner.core.patterns import parse_entity_id
from eventrunner.core.records import Manifest
from eventrunner.run.engine import Engine
from eventrunner.run.events import Event, Failed, Managed, Pruned, Started, Succeeded
from eventrunner.run.gate import Gate
from eventrunner.run.planner import Planner, Target
from eventrunner.run.queries import entity_values as _entity_values  # the ops' old name
from eventrunner.run.queries import resolve_stages
from eventrunner.run.report import RunReport
from eventrunner.run.session import Session
from eventrunner.state.files import remove_path
from eventrunner.state.index import Index
from eventrunner.state.store import Store

log = logging.getLogger("eventrunner.management")


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
    q0 = resolve_stages(index.ws.graph, stage)[0]
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
    for q in resolve_stages(index.ws.graph, stage):
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
    q = resolve_stages(index.ws.graph, stage)[0]
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


Owners = dict[str, tuple[str, str]]  # output relpath -> the live (stage, entity) producing it


def _live_owners(index: Index, leaving: set[tuple[str, str]]) -> Owners:
    """Which state's manifest lists each output, among the states that stay."""
    return {
        relpath: (q, eid)
        for q, manifests in index.manifests.items()
        for eid, m in manifests.items()
        if (q, eid) not in leaving
        for relpath in m.output_paths
    }


def _delete_outputs(
    index: Index, relpaths: Sequence[str], owners: Owners, dry_run: bool
) -> list[dict[str, str]]:
    """Delete outputs no state that stays owns; the others are kept and returned. Validation
    rejects overlapping outputs already: this is the defence when one slipped through (an
    edited pipeline, a hand-made manifest), checked at the moment of deleting."""
    kept = []
    for relpath in relpaths:
        owner = owners.get(relpath)
        if owner is not None:
            kept.append({"path": relpath, "stage": owner[0], "entity": owner[1]})
            log.warning("prune: kept %s, the output of %s %s", relpath, *owner)
        elif not dry_run:
            remove_path(index.root / relpath)
            index.file_removed(relpath)
    return kept


def prune(
    index: Index, store: Store, dry_run: bool = False, *, save: bool = True
) -> list[dict[str, Any]]:
    """Delete outputs and manifests of orphaned states, and fan-out outputs no longer produced;
    never a file another state that stays lists as its output (that one is reported `kept`)."""
    out: list[dict[str, Any]] = []
    orphans: list[tuple[str, str, Manifest]] = []
    shrunk: list[tuple[str, str, Manifest]] = []
    for q in index.ws.graph.order:
        for eid, _f in list(index.failures[q].items()):
            if eid not in index.manifests[q] and not index.has_entity(
                q, parse_entity_id(index.ws.graph.stages[q].entity_vars, eid)
            ):
                out.append({"stage": q, "entity": eid, "outputs": []})
                if not dry_run:
                    index.clear_failure(q, eid)
        for eid, m in index.manifests[q].items():
            if not index.has_entity(q, m.values):
                orphans.append((q, eid, m))
            elif m.dropped:
                shrunk.append((q, eid, m))
    owners = _live_owners(index, {(q, eid) for q, eid, _m in orphans}) if orphans or shrunk else {}
    for q, eid, m in shrunk:
        kept = _delete_outputs(index, m.dropped, owners, dry_run)
        out.append({"stage": q, "entity": eid, "outputs": list(m.dropped)} | _kept(kept))
        if not dry_run:
            index.outputs_pruned(q, eid)
    for q, eid, m in orphans:
        kept = _delete_outputs(index, [*m.outputs, *m.dropped], owners, dry_run)
        out.append({"stage": q, "entity": eid, "outputs": sorted(m.outputs)} | _kept(kept))
        if not dry_run:
            index.forget_state(q, eid)
    if out and not dry_run:
        index.derive()
        _save(index, save)
    return out


def _kept(kept: list[dict[str, str]]) -> dict[str, Any]:
    return {"kept": kept} if kept else {}


# -- on a held workspace: what the CLI and the HTTP API call ---------------------------------------
def manage(session: Session, action: str, body: dict[str, Any]) -> Any:
    """invalidate / retry / hold / release; while work runs (serve), queue what became
    runnable. The index cache follows when the holder saves (at close, or serve's persist loop)."""
    idx, store = session.index, session.store
    assert idx is not None
    session.unstamp()  # holds, invalidations, retries: let the next start evaluate fully
    stage: str | None = body.get("stage")
    eids: list[str] | None = body.get("entities") or None
    # Only what the call touched is checked again: whole stages when no entity was named.
    whole: list[str] = []
    pairs: list[tuple[str, str]] = []
    if action == "invalidate":
        result = invalidate(
            idx, store, _required(stage), eids, bool(body.get("downstream")), save=False
        )
        if eids:
            pairs = [(result["stages"][0], e) for e in result["entities"]]
            pairs += [(d["stage"], d["entity"]) for d in result["downstream"]]
        else:
            whole = result["stages"]
    elif action == "retry":
        result = retry(idx, store, stage, eids, save=False)
        pairs = [(c["stage"], c["entity"]) for c in result["cleared"]]
    elif action in ("hold", "release"):
        result = hold(idx, store, _required(stage), eids, on=action == "hold", save=False)
        if eids:
            pairs = [(result["stage"], e) for e in result["entities"]]
        else:
            whole = [result["stage"]]
    else:
        raise ValueError(action)
    if session.engine is not None:
        targets: list[Target] = [(q, e, v) for q in whole for e, v in idx.stage_entities(q)]
        for q, e in pairs:
            values = idx.values_or_none(q, e)
            if values is not None:
                targets.append((q, e, values))
        session.engine.consider(targets)
    session.events.emit(Managed(action=action))  # holds, invalidations: states recounted
    return result


def prune_orphans(session: Session, dry_run: bool) -> dict[str, Any]:
    """Delete orphaned states' outputs and manifests (see prune); while serving, on the loop,
    so no event interleaves."""
    assert session.index is not None
    session.unstamp()
    pruned = prune(session.index, session.store, dry_run=dry_run, save=False)
    if pruned and not dry_run:
        session.events.emit(Pruned(states=len(pruned)))
    return {"pruned": pruned, "dry_run": dry_run}


async def run_selection(
    session: Session,
    stages: list[str],
    entity: str | None,
    stopping: asyncio.Event | None = None,
) -> RunReport:
    """`eventrunner run` while serving: check the selection now, wait until nothing is queued
    or running, and report what ran meanwhile (the server's other work included). ShuttingDown
    when `stopping` is set first: the caller is answered now, not when the HTTP server gives up
    on the request at exit (issue 14.14)."""
    engine, idx = session.engine, session.index
    assert engine is not None and idx is not None
    began = time.perf_counter()
    counts: Counter[str] = Counter()
    report = RunReport(mode="server")
    ran: set[tuple[str, str]] = set()

    def tally(event: Event) -> None:
        if isinstance(event, Started | Succeeded | Failed):
            counts[str(event.kind)] += 1
        if isinstance(event, Started):
            ran.add((event.stage, event.entity))
        if isinstance(event, Failed):
            report.failures.append(
                {"stage": event.stage, "entity": event.entity, "error": event.error}
            )

    selected = [(q, e) for q in stages for e in idx.stage_entity_ids(q) if entity in (None, e)]
    if entity is not None and not selected:
        raise UnknownName(f"no selected stage has entity {entity!r}")
    blocked: set[tuple[str, str]] = set()
    session.events.subscribe(tally)
    try:
        # Like a local run: files the watcher has not delivered (or no watcher) count too.
        removed = [t for t in await session.rescan() if t[0] in stages]
        targets = (
            engine.targets(stages)
            if entity is None
            else ((q, e, idx.entity_values(q, e)) for q, e in selected)
        )
        await engine.consider_async(
            itertools.chain(removed, targets), blocked=blocked, warm=entity is None
        )
        # Skipped: selected states the pass found held, failed or dead (not run).
        report.skipped = len(blocked)
        await _idle_or_stopping(engine, stopping)
    finally:
        session.events.unsubscribe(tally)
    if stopping is not None and stopping.is_set():
        raise ShuttingDown(
            f"the server is shutting down; the run was cut short after {counts['started']} "
            f"execution(s) ({counts['succeeded']} succeeded, {counts['failed']} failed)"
        )
    report.executed, report.succeeded = counts["started"], counts["succeeded"]
    report.failed = counts["failed"]
    report.not_fresh = await _not_fresh(session, blocked | ran, set(stages), entity)
    report.duration_s = round(time.perf_counter() - began, 3)
    return report


async def _not_fresh(
    session: Session, seen: set[tuple[str, str]], stages: set[str], entity: str | None
) -> list[dict[str, Any]]:
    """The selected states not fresh after the run, as a local run finds them (cli/run.py):
    those its pass found blocked and those that ran, evaluated again, then everything below
    the ones still not fresh (O(what is not fresh), yielding to the loop as it goes)."""
    index, engine = session.index, session.engine
    assert index is not None and engine is not None
    # The engine's evaluator: an aggregate that ran is checked from its cert, not by a walk of
    # every member. Its memo is dropped around each slice: the run changed state since its
    # pass, and another pass (a reconcile) may be under way between the slices.
    gate = Gate(index, engine.evaluator, incremental=True)

    def isolated(check: Callable[[], object]) -> None:
        engine.forget_verdicts()
        check()
        engine.forget_verdicts()

    batch: list[Target] = []
    for q, e in sorted(seen):
        if q not in stages or entity not in (None, e):
            continue  # the server's other work
        if (values := index.values_or_none(q, e)) is not None:
            batch.append((q, e, values))
        if len(batch) >= 500:
            isolated(lambda: gate.check(batch))
            batch.clear()
            await asyncio.sleep(0)
    isolated(lambda: gate.check(batch))
    isolated(lambda: gate.follow(lambda q, e: q in stages and entity in (None, e)))
    return gate.entries()


async def _idle_or_stopping(engine: Engine, stopping: asyncio.Event | None) -> None:
    """Wait until the engine is idle or `stopping` is set, whichever comes first."""
    if stopping is None:
        await engine.wait_idle()
        return
    idle = asyncio.ensure_future(engine.wait_idle())
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (idle, stop):
            task.cancel()
        await asyncio.wait({idle, stop})


def _required(stage: str | None) -> str:
    if not stage:
        raise UsageError("stage is required")
    return stage
