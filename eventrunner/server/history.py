"""GET /api/history: recent executions from the journal, newest first, filtered."""

from __future__ import annotations

from aiohttp import web

from eventrunner.core.errors import UsageError
from eventrunner.run.queries import resolve_stages
from eventrunner.server.http import int_param
from eventrunner.server.keys import HISTORY, RUNTIME
from eventrunner.service.history import OUTCOMES

MAX_LIMIT = 1000


async def history_route(request: web.Request) -> web.Response:
    """?pipeline=&stage=&entity=&outcome=&limit=&before= (before: a seq, for the next page)."""
    rt = request.app[RUNTIME]
    q = request.query
    pipeline = q.get("pipeline") or None
    stage = q.get("stage") or None
    outcome = q.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise UsageError(f"unknown outcome {outcome!r} (one of {', '.join(OUTCOMES)})")
    stages = None
    if pipeline is not None or stage is not None:
        if rt.index is None:
            raise web.HTTPServiceUnavailable(reason="starting up", headers={"Retry-After": "1"})
        stages = set(resolve_stages(rt.index.ws.graph, stage, pipeline))
    limit = min(int_param(request, "limit", 100) or 100, MAX_LIMIT)
    before = int_param(request, "before", None)
    history = request.app[HISTORY]
    found = history.query(
        stages=stages, entity=q.get("entity") or None, outcome=outcome, before=before, limit=limit
    )
    return web.json_response(
        {
            "executions": [e.to_json() for e in found],
            "kept": len(history.entries),
            "limit": limit,
            "next_before": found[-1].seq if len(found) == limit else None,
        }
    )
