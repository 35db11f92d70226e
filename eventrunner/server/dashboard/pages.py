"""The dashboard's pages: overview, graph, stage, entity, failures, events, activity."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from eventrunner.core.errors import HandlerError
from eventrunner.core.staleness import STATES as STATE_NAMES
from eventrunner.server.dashboard import graph as graphs
from eventrunner.server.dashboard.entity import entity_view
from eventrunner.server.dashboard.live import RECENT_KEY
from eventrunner.server.dashboard.queries import (
    REASONS,
    Selection,
    failure_groups,
    page_of,
    recent_failures,
    stage_counts,
    table,
)
from eventrunner.server.dashboard.render import page, render
from eventrunner.server.keys import HISTORY, RUNTIME, STATES
from eventrunner.service.history import OUTCOMES
from eventrunner.workspace import codeid

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime

BAR_STATES = ("fresh", "running", "stale", "waiting", "failed", "dead", "held", "orphaned")


def runtime_of(request: web.Request) -> Runtime:
    rt = request.app[RUNTIME]
    if not rt.ready.is_set() or rt.index is None or rt.engine is None:
        raise web.HTTPServiceUnavailable(reason="starting up")
    return rt


def _htmx_target(request: web.Request) -> str | None:
    return request.headers.get("HX-Target") if request.headers.get("HX-Request") else None


def _health(rt: Runtime) -> dict[str, Any]:
    from eventrunner.service.schedule import next_fire  # APScheduler: not at import

    crons = []
    for q, st in rt.ws.graph.stages.items():
        if st.schedule:
            fire = next_fire(st.schedule)
            crons.append(
                {"stage": q, "schedule": st.schedule, "next": fire.timestamp() if fire else None}
            )
    return {
        "ready": rt.ready.is_set(),
        "watch": rt.watch_enabled,
        "watching": rt.watching,
        "last_reconcile": rt.last_reconcile,
        "started_at": rt.started_at,
        "reload_error": rt.last_reload_error,
        "crons": sorted(crons, key=lambda c: c["next"] or 0),
    }


@page
async def overview(request: web.Request) -> web.StreamResponse:
    """GET /: every pipeline's stages with counts, queue, running, failures, health."""
    rt = runtime_of(request)
    assert rt.index is not None and rt.engine is not None
    g = rt.ws.graph
    t = await table(request.app[STATES])
    context = {
        "pipelines": [(p, [g.stages[q] for q in qs]) for p, qs in sorted(g.pipelines.items())],
        "counts": stage_counts(t, list(g.order)),
        "queue_depth": rt.engine.queue_depth,
        "running": sorted(rt.index.running)[:20],
        "running_total": len(rt.index.running),
        "failures": recent_failures(rt, 10),
        "activity": request.app[HISTORY].query(limit=8),
        "health": _health(rt),
        "bar_states": BAR_STATES,
        "bar": graphs.bar,
        "live": "overview",
    }
    return render(request, "overview.html", context)


@page
async def graph(request: web.Request) -> web.StreamResponse:
    """GET /graph: the stage graph as SVG, a state bar per stage, linked to its stage."""
    rt = runtime_of(request)
    g = rt.ws.graph
    t = await table(request.app[STATES])
    context = {
        "layout": graphs.layout(g),
        "counts": stage_counts(t, list(g.order)),
        "bar": graphs.bar,
        "bar_states": BAR_STATES,
        "stages": [g.stages[q] for q in g.order],
        "live": "graph",
    }
    return render(request, "graph.html", context)


@page
async def stage(request: web.Request) -> web.StreamResponse:
    """GET /stages/{stage}: the definition, counts, and a keyset page of its states."""
    rt = runtime_of(request)
    sel = Selection.parse(rt, request.query, stage=request.match_info["stage"])
    t = await table(request.app[STATES])
    after, before = request.query.get("after") or None, request.query.get("before") or None
    pg = page_of(rt, t, sel, after=after, before=before)
    context = {
        "stage": rt.ws.graph.stages[sel.stage],
        "sel": sel,
        "pg": pg,
        "after": after,
        "before": before,
        "counts": stage_counts(t, [sel.stage])[sel.stage],
        "reasons": REASONS,
        "states": STATE_NAMES,
        "bar": graphs.bar,
        "bar_states": BAR_STATES,
        "live": "stage",
        "live_stage": sel.stage,
        "self_url": request.path_qs,
    }
    if _htmx_target(request) == "entities":
        return render(request, "_entities.html", context)
    context.update(_definition(rt, sel.stage))
    return render(request, "stage.html", context)


def _definition(rt: Runtime, q: str) -> dict[str, Any]:
    from eventrunner.service.schedule import next_fire  # APScheduler: not at import

    st = rt.ws.graph.stages[q]
    ref = rt.ws.handlers.get(q)
    helpers: list[str] = []
    if ref is not None:
        try:
            helpers = codeid.covered(ref.path, ref.function, ref.root)
        except HandlerError as exc:
            helpers = [f"(cannot read: {exc})"]
    return {
        "handler_file": str(ref.path) if ref is not None and not ref.stock else "stock handler",
        "code_id": rt.ws.code.get(q, ""),
        "params_json": json.dumps(st.params, indent=1, sort_keys=True, default=str),
        "helpers": helpers,
        "upstream": rt.ws.graph.upstream(q),
        "downstream": rt.ws.graph.downstream(q),
        "next_fire": (f.timestamp() if (f := next_fire(st.schedule)) else None)
        if st.schedule
        else None,
    }


@page
async def entity(request: web.Request) -> web.StreamResponse:
    """GET /entities/{entity}: the entity in every stage that has it."""
    rt = runtime_of(request)
    eid = request.match_info["entity"]
    only = request.query.get("stage") or None
    if only is not None and only not in rt.ws.graph.stages:
        only = Selection.parse(rt, {"stage": only}).stage
    t = await table(request.app[STATES])
    views = entity_view(rt, t, request.app[HISTORY], eid, only)
    context = {
        "eid": eid,
        "views": views,
        "only": only,
        "live": "entity",
        "live_entity": eid,
        "self_url": request.path_qs,
    }
    if _htmx_target(request) == "entity-body":
        return render(request, "_entity.html", context)
    return render(request, "entity.html", context)


@page
async def failures(request: web.Request) -> web.StreamResponse:
    """GET /failures: failed, dead and held states grouped by stage and error."""
    rt = runtime_of(request)
    t = await table(request.app[STATES])
    context = {"groups": failure_groups(rt, t), "live": "failures"}
    if _htmx_target(request) == "groups":
        return render(request, "_groups.html", context)
    return render(request, "failures.html", context)


@page
async def events(request: web.Request) -> web.StreamResponse:
    """GET /events: the event tail (live with JavaScript; the last events without)."""
    rt = request.app[RUNTIME]
    kind = request.query.get("kind") or ""
    stage_text = request.query.get("stage") or ""
    shown = [
        s
        for s in reversed(request.app[RECENT_KEY].items)
        if (not kind or s.kind == kind) and (not stage_text or stage_text in s.stage)
    ][:200]
    kinds = sorted({"changed", "queued", "started", "succeeded", "failed", "managed", "reloaded"})
    context = {
        "shown": shown,
        "kind": kind,
        "stage_text": stage_text,
        "kinds": kinds,
        "stages": list(rt.ws.graph.order),
        "live": "events",
    }
    return render(request, "events.html", context)


@page
async def activity(request: web.Request) -> web.StreamResponse:
    """GET /activity: recent executions from the history, by stage and outcome."""
    rt = request.app[RUNTIME]
    stage_name = request.query.get("stage") or None
    outcome = request.query.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        outcome = None
    stages = None
    if stage_name is not None:
        stages = {Selection.parse(rt, {"stage": stage_name}).stage}
    before_raw = request.query.get("before") or ""
    before = int(before_raw) if before_raw.isdigit() else None
    found = request.app[HISTORY].query(stages=stages, outcome=outcome, before=before, limit=100)
    context = {
        "executions": found,
        "stage_name": stage_name or "",
        "outcome": outcome or "",
        "outcomes": OUTCOMES,
        "stages": list(rt.ws.graph.order),
        "next_before": found[-1].seq if len(found) == 100 else None,
        "live": "activity",
        "now": time.time(),
    }
    if _htmx_target(request) == "executions":
        return render(request, "_executions.html", context)
    return render(request, "activity.html", context)
