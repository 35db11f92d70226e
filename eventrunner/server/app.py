"""The aiohttp application: management API, health, events stream, metrics, webhooks."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from eventrunner.core.errors import (
    EventRunnerError,
    ShuttingDown,
    UnknownName,
    UsageError,
    http_status_for,
)
from eventrunner.core.redact import remember_secret
from eventrunner.core.staleness import STATES as STATE_NAMES
from eventrunner.run import management, noops, queries
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.gate import IGNORED, Gate
from eventrunner.server.guard import GUARD, ConnectionGuard
from eventrunner.server.http import Handler, InvalidBody, error_response, int_param, read_body
from eventrunner.server.keys import HISTORY, RUNTIME, SESSION_OK, STATES
from eventrunner.server.states import StateTable
from eventrunner.service.history import FILE as HISTORY_FILE
from eventrunner.service.history import History

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime
    from eventrunner.state.index import Index

log = logging.getLogger("eventrunner.server")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to a JSON error; never a bare 500 page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            exc.status,
            exc.reason or "error",
            headers={k: v for k, v in exc.headers.items() if k == "Retry-After"},
        )
    except InvalidBody as exc:
        return error_response(422, str(exc))
    except EventRunnerError as exc:
        status = http_status_for(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        code = "shutting_down" if isinstance(exc, ShuttingDown) else None
        return error_response(status, str(exc), code, headers=headers)
    except asyncio.CancelledError:
        raise
    except ConnectionError as exc:  # the client went away mid-request: nothing to answer
        log.info("%s %s: client closed the connection (%s)", request.method, request.path, exc)
        return error_response(400, "client closed the connection")
    except Exception:
        request.app.logger.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal error (see the server log)")


def auth_middleware(token_env: str | None) -> Any:
    """Bearer token on management routes when a token is configured (constant-time compare)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = os.environ.get(token_env) if token_env else None
        if token:
            remember_secret(token)
        path = request.path
        public = path in ("/healthz", "/readyz") or path.startswith("/hooks/")
        if token and not public and not request.get(SESSION_OK):
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    return check


def _rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def _ready(rt: Runtime) -> None:
    if not rt.ready.is_set() or rt.index is None:
        raise web.HTTPServiceUnavailable(reason="starting up", headers={"Retry-After": "1"})


def _pipeline(request: web.Request) -> str | None:
    p = request.match_info["pipeline"]
    rt = _rt(request)
    if p == "_":
        return None
    if p not in rt.ws.graph.pipelines:
        raise UnknownName(f"no pipeline {p!r}")
    return p


async def _body(request: web.Request, model: str) -> Any:
    return await read_body(request, model, _rt(request).settings.server.body_timeout)


def _qualify(rt: Runtime, pipeline: str | None, stage: str | None) -> str | None:
    if stage is None or pipeline is None or stage in rt.ws.graph.stages:
        return stage
    return f"{pipeline}.{stage}"


async def healthz(request: web.Request) -> web.Response:
    from eventrunner.server.hooks import intake_degraded

    degraded = intake_degraded(request.app)
    if degraded is not None:  # alive, and restarting would not help: 200 with the detail
        return web.json_response({"status": "degraded", **degraded})
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    from eventrunner.server.hooks import intake_degraded

    rt = _rt(request)
    degraded = intake_degraded(request.app)
    if degraded is not None:
        return web.json_response(
            {"status": "degraded", "ready": False, **degraded},
            status=503,
            headers={"Retry-After": "5"},
        )
    if rt.ready.is_set():
        return web.json_response({"status": "ready", "ready": True})
    return web.json_response(
        {"status": "starting", "ready": False}, status=503, headers={"Retry-After": "1"}
    )


async def pipelines(request: web.Request) -> web.Response:
    rt = _rt(request)
    _ready(rt)
    assert rt.index is not None
    table = await request.app[STATES].get()
    counts = table.counts(list(rt.ws.graph.order))
    return web.json_response(queries.status(rt.index, counts=counts, failed=table.failed()))


async def pipeline_status(request: web.Request) -> web.Response:
    rt = _rt(request)
    _ready(rt)
    p = _pipeline(request)
    assert rt.index is not None and rt.engine is not None
    table = await request.app[STATES].get()
    counts = table.counts(list(rt.ws.graph.order))
    data = queries.status(rt.index, p, counts=counts, failed=table.failed())
    stages = set(rt.ws.graph.pipelines.get(p or "", rt.ws.graph.stages))
    running = [
        {"stage": q, "entity": e} for q, e in sorted(rt.index.running) if p is None or q in stages
    ]
    failures = sorted(
        (
            f.to_json()
            for q, fs in rt.index.failures.items()
            if p is None or q in stages
            for f in fs.values()
        ),
        key=lambda f: -f["last_failed"],
    )[:20]
    for f in failures:
        f.pop("traceback", None)
    # One shape for both: stage -> counts; across pipelines ("_") stages go by qualified name.
    stage_counts = {
        (s if p else f"{name}.{s}"): counts
        for name, pdata in data["pipelines"].items()
        for s, counts in pdata["stages"].items()
    }
    body: dict[str, Any] = {
        "pipeline": p or "_",
        "stages": stage_counts,
        "running": running,
        "recent_failures": failures,
        "queue_depth": rt.engine.queue_depth,
    }
    body["warnings"] = noops.source_warnings(rt.index)  # cheap: strays are `run`'s to find
    if request.query.get("check") not in (None, "", "0", "false"):
        # `status --check`: every state that is not fresh, with why (O(those states)).
        body["not_fresh"] = await _not_fresh(request, queries.resolve_stages(rt.ws.graph, None, p))
    return web.json_response(body)


async def _not_fresh(
    request: web.Request, stages: list[str], entity: str | None = None
) -> list[dict[str, Any]]:
    """The selected states that are not fresh: the state table names the candidates, each is
    evaluated afresh (yielding to the loop every few hundred)."""
    rt = _rt(request)
    table = await request.app[STATES].get()
    index = rt.index
    assert index is not None
    gate = Gate(index)
    candidates = [
        (q, e)
        for q in stages
        for e, state in list(table.states.get(q, {}).items())
        if state not in IGNORED and entity in (None, e)
    ]
    for n, (stage, eid) in enumerate(candidates, 1):
        values = index.values_or_none(stage, eid)
        if values is not None:
            gate.check([(stage, eid, values)])
        if n % 500 == 0:
            await asyncio.sleep(0)
    return gate.entries()


async def entities(request: web.Request) -> web.Response:
    rt = _rt(request)
    _ready(rt)
    p = _pipeline(request)
    assert rt.index is not None
    limit = int_param(request, "limit", 100) or 100
    offset = int_param(request, "offset", 0) or 0
    stage = request.query.get("stage") or None
    state = request.query.get("state") or None
    if state is not None and state not in STATE_NAMES:
        raise UsageError(f"unknown state {state!r} (one of {', '.join(STATE_NAMES)})")
    stages = queries.resolve_stages(rt.ws.graph, stage, p)
    if state is None:
        ids = [(q, e) for q in stages for e in queries.state_ids(rt.index, q)]  # no evaluation
    else:
        # Which states are in `state`: the shared table, kept up to date from events.
        table = await request.app[STATES].get()
        ids = [(q, e) for q in stages for e in table.ids(q, state)]
    # Only the page is evaluated (afresh: its rows show their state now, with reasons).
    evaluator = Evaluator(rt.index)
    page = [
        queries.Row(q, e, v, evaluator.verdict(q, e, v))
        for q, e in ids[offset : offset + min(limit, 1000)]
        for v in (rt.index.entity_values(q, e),)
    ]
    return web.json_response(
        {
            "entities": [r.to_json() for r in page],
            "total": len(ids),
            "limit": limit,
            "offset": offset,
        }
    )


async def explain(request: web.Request, *, logs: bool = False) -> web.Response:
    rt = _rt(request)
    _ready(rt)
    p = _pipeline(request)
    assert rt.index is not None
    eid, stage = request.match_info["entity"], request.query.get("stage")
    if logs:  # .../entities/{entity}/logs?stage=S: what its last attempt printed
        if not stage:
            raise UsageError("the stage query parameter is required")
        return web.json_response(queries.last_output(rt.index, stage, eid, p), dumps=_dumps)
    body = {"entity": eid, "stages": queries.explain(rt.index, eid, stage, p)}
    return web.json_response(body, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _manage(action: str, model: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        rt = _rt(request)
        _ready(rt)
        p = _pipeline(request)
        body = (await _body(request, model)).model_dump()
        body["stage"] = _qualify(rt, p, body.get("stage"))
        # On the loop, not in a thread: manage() mutates the index the engine is using.
        result = management.manage(rt.session, action, body)
        return web.json_response(result, dumps=_dumps)

    return handle


async def run(request: web.Request) -> web.Response:
    """`eventrunner run` while serving (the CLI comes here instead of taking the lock)."""
    rt = _rt(request)
    _ready(rt)
    p = _pipeline(request)
    assert rt.index is not None
    body = await _body(request, "RunRequest")
    stages = queries.resolve_stages(rt.ws.graph, body.stage, p)
    report = await management.run_selection(rt.session, stages, body.entity, rt.stop_event)
    report.warnings = noops.source_warnings(rt.index) + await _strays(rt.index)
    return web.json_response(report.to_json(), dumps=_dumps)


async def _strays(index: Index) -> list[str]:
    """Files dropped where stages write (noops.stray_outputs): what each stage produced is
    read on the loop a few thousand records at a time (0.3-0.4 s per stage at 100,000 in one
    go), the folders are listed in a thread."""
    out = []
    for q in index.ws.graph.order:
        pattern, produced = noops.output_pattern(index, q), set[str]()
        for n, (made, dropped) in enumerate(index.stage_outputs(q), 1):
            produced.update(made)
            produced.update(dropped)
            if n % 4096 == 0:
                await asyncio.sleep(0)  # the scan is paged: no statement stays open meanwhile
        found = await asyncio.to_thread(noops.unproduced, pattern, str(index.root), produced)
        if found:
            out.append(noops.stray_message(index.ws.graph, q, pattern, found))
    return out


async def prune(request: web.Request) -> web.Response:
    """`eventrunner prune` while serving."""
    rt = _rt(request)
    _ready(rt)
    _pipeline(request)  # pruning is workspace-wide; "_" is the usual address
    body = await _body(request, "PruneRequest")
    return web.json_response(management.prune_orphans(rt.session, body.dry_run), dumps=_dumps)


async def _openapi(request: web.Request) -> web.Response:
    from eventrunner.server.openapi import openapi_document  # pydantic: at the first request

    return await openapi_document(request)


def create_app(runtime: Runtime) -> web.Application:
    """The application for one runtime (tests use it with aiohttp_client)."""
    from eventrunner.server.dashboard import setup_dashboard
    from eventrunner.server.dashboard.security import guard as dashboard_guard
    from eventrunner.server.events import events_stream
    from eventrunner.server.history import history_route
    from eventrunner.server.hooks import setup_hooks
    from eventrunner.server.metrics import setup_metrics

    settings = runtime.settings
    connections = ConnectionGuard(settings.server)
    app = web.Application(
        middlewares=[
            connections.middleware,
            errors_middleware,
            dashboard_guard,
            auth_middleware(settings.server.token_env),
        ],
        client_max_size=settings.server.body_limit,
    )
    app[GUARD] = connections
    app[RUNTIME] = runtime
    app[STATES] = StateTable(runtime)
    if token := (os.environ.get(settings.server.token_env) if settings.server.token_env else None):
        remember_secret(token)
    history = History(settings.state_dir / HISTORY_FILE, index=lambda: runtime.index)
    runtime.events.subscribe(history.on_event)
    app[HISTORY] = history
    app.cleanup_ctx.append(history.lifespan)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/api/pipelines", pipelines)
    r.add_get("/api/pipelines/{pipeline}/status", pipeline_status)
    r.add_get("/api/pipelines/{pipeline}/entities", entities)
    r.add_get("/api/pipelines/{pipeline}/entities/{entity}", explain)
    r.add_get("/api/pipelines/{pipeline}/entities/{entity}/logs", partial(explain, logs=True))
    r.add_post("/api/pipelines/{pipeline}/invalidate", _manage("invalidate", "InvalidateRequest"))
    r.add_post("/api/pipelines/{pipeline}/retry", _manage("retry", "RetryRequest"))
    r.add_post("/api/pipelines/{pipeline}/hold", _manage("hold", "HoldRequest"))
    r.add_post("/api/pipelines/{pipeline}/release", _manage("release", "HoldRequest"))
    r.add_post("/api/pipelines/{pipeline}/run", run)
    r.add_post("/api/pipelines/{pipeline}/prune", prune)
    r.add_get("/api/events", events_stream)
    r.add_get("/api/history", history_route)
    r.add_get("/api/openapi.json", _openapi)
    setup_metrics(app, runtime)
    setup_hooks(app, runtime)
    setup_dashboard(app, runtime)
    return app
