"""Dashboard forms: rerun / retry / hold / release for one entity or a whole selection
(previewed with count and sample, then confirmed and resolved again on the server), and
signing in and out."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from aiohttp import web

from eventrunner.run import management
from eventrunner.run.planner import Planner
from eventrunner.server.dashboard.pages import runtime_of
from eventrunner.server.dashboard.queries import Selection, resolve, table
from eventrunner.server.dashboard.render import page, render, url_part
from eventrunner.server.dashboard.security import SESSIONS, safe_next, set_cookie
from eventrunner.server.keys import STATES

# action -> (management call, downstream, what the page calls it)
ACTIONS: dict[str, tuple[str, bool, str]] = {
    "retry": ("retry", False, "Retry"),
    "hold": ("hold", False, "Hold"),
    "release": ("release", False, "Release"),
    "rerun": ("invalidate", False, "Rerun"),
    "rerun_down": ("invalidate", True, "Rerun with downstream"),
}
SAMPLE = 10
DOWNSTREAM_SHOWN = 50
DOWNSTREAM_WALK = 1000  # entities whose descendants a preview lists at most


def _action(name: str) -> tuple[str, bool, str]:
    if name not in ACTIONS:
        raise web.HTTPNotFound(reason=f"no action {name!r}")
    return ACTIONS[name]


def _describe(rt: Any, sel: Selection, ids: list[str], down: bool) -> dict[str, Any]:
    """Downstream of a selection, for the preview: stages when whole, else states (bounded)."""
    if not down:
        return {"down_stages": [], "down_states": [], "down_total": 0, "down_partial": False}
    if sel.whole_stage:
        return {
            "down_stages": rt.ws.graph.closure_downstream(sel.stage),
            "down_states": [],
            "down_total": 0,
            "down_partial": False,
        }
    planner, seen = Planner(rt.index), dict[tuple[str, str], None]()
    for eid in ids[:DOWNSTREAM_WALK]:
        values = rt.index.values_or_none(sel.stage, eid)
        for q, e, _ in planner.descendants(sel.stage, values) if values is not None else ():
            seen.setdefault((q, e))
    return {
        "down_stages": [],
        "down_states": list(seen)[:DOWNSTREAM_SHOWN],
        "down_total": len(seen),
        "down_partial": len(ids) > DOWNSTREAM_WALK,
    }


@page
async def preview(request: web.Request) -> web.StreamResponse:
    """GET /actions/preview?action=&stage=&state=&...: what confirming would act on."""
    rt = runtime_of(request)
    name = request.query.get("action", "")
    _, down, label = _action(name)
    sel = Selection.parse(rt, request.query)
    ids = await resolve(rt, await table(request.app[STATES]), sel)
    context = {
        "action": name,
        "label": label,
        "sel": sel,
        "count": len(ids),
        "sample": ids[:SAMPLE],
        "next": safe_next(request.query.get("next")),
        **_describe(rt, sel, ids, down),
    }
    template = "_preview.html" if request.headers.get("HX-Request") else "preview.html"
    return render(request, template, context)


@page
async def perform(request: web.Request) -> web.StreamResponse:
    """POST /actions/{action}: resolve the selection again here, then act on it."""
    rt = runtime_of(request)
    name = request.match_info["action"]
    op, down, label = _action(name)
    form = await request.post()
    fields = {k: str(v) for k, v in form.items()}
    sel = Selection.parse(rt, fields)
    ids = await resolve(rt, await table(request.app[STATES]), sel)
    result: Any = None
    if sel.whole_stage or ids:
        body = {
            "stage": sel.stage,
            "entities": None if sel.whole_stage else ids,
            "downstream": down,
        }
        result = management.manage(rt.session, op, body)
    target = fields.get("next")
    if target:
        if request.headers.get("HX-Request"):  # htmx would swap the whole page into the box
            return web.Response(status=204, headers={"HX-Redirect": safe_next(target)})
        return see_other(safe_next(target))
    context = {
        "label": label,
        "sel": sel,
        "count": len(ids),
        "whole": sel.whole_stage,
        "result": result,
        "back": f"/stages/{url_part(sel.stage)}",
    }
    template = "_result.html" if request.headers.get("HX-Request") else "result.html"
    return render(request, template, context)


@page
async def login_form(request: web.Request) -> web.StreamResponse:
    """GET /login: the sign-in form (the token goes in a POST body, never in a URL)."""
    if not request.app[SESSIONS].token():
        return see_other("/")
    return render(
        request, "login.html", {"next": safe_next(request.query.get("next")), "error": None}
    )


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login: exchange the token for a signed session cookie."""
    sessions = request.app[SESSIONS]
    token = sessions.token()
    form = await request.post()
    target = safe_next(str(form.get("next", "/")))
    if not token:
        return see_other("/")
    given = str(form.get("token", ""))
    if not hmac.compare_digest(given.encode(), token.encode()):
        await asyncio.sleep(0.25)  # slows guessing down a little
        context = {"next": target, "error": "That token is not the server's token."}
        return render(request, "login.html", context, status=401)
    _, cookie = sessions.issue(
        auth=True
    )  # a new session id: nothing chosen before sign-in survives
    resp = see_other(target)
    set_cookie(request, resp, cookie)
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: replace the session with a signed-out one."""
    sessions = request.app[SESSIONS]
    _, cookie = sessions.issue(auth=not sessions.token())
    resp = see_other("/login" if sessions.token() else "/")
    set_cookie(request, resp, cookie)
    return resp


def see_other(location: str) -> web.Response:
    """303 to a page (returned, not raised, so the guard still adds its headers)."""
    return web.Response(status=303, headers={"Location": location})
