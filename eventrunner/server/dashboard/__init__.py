"""The web dashboard served by `eventrunner serve` at / (DESIGN.md section 11).

Server-rendered pages (Jinja2, autoescaped), htmx for fragment updates and one SSE stream
per tab (`/live`, coalesced on the server) for the live parts; every page works without
JavaScript. Routes are named "ui.*": the security guard knows them by that name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from eventrunner.server.dashboard import actions, pages
from eventrunner.server.dashboard.live import RECENT_KEY, Recent, live
from eventrunner.server.dashboard.render import ENV, Static, environment
from eventrunner.server.dashboard.security import SESSIONS, Sessions

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime


def setup_dashboard(app: web.Application, runtime: Runtime) -> None:
    """Register the pages, forms, stream and assets on the app."""
    settings = runtime.settings
    static = Static()
    app[ENV] = environment(static)
    app[SESSIONS] = Sessions(settings.state_dir, settings.server.token_env)
    recent = Recent()
    runtime.events.subscribe(recent.on_event)
    app[RECENT_KEY] = recent
    r = app.router
    r.add_get("/", pages.overview, name="ui.overview")
    r.add_get("/graph", pages.graph, name="ui.graph")
    r.add_get("/stages/{stage}", pages.stage, name="ui.stage")
    r.add_get("/entities/{entity}", pages.entity, name="ui.entity")
    r.add_get("/failures", pages.failures, name="ui.failures")
    r.add_get("/events", pages.events, name="ui.events")
    r.add_get("/activity", pages.activity, name="ui.activity")
    r.add_get("/live", live, name="ui.live")
    r.add_get("/actions/preview", actions.preview, name="ui.preview")
    r.add_post("/actions/{action}", actions.perform, name="ui.perform")
    r.add_get("/login", actions.login_form, name="ui.login")
    r.add_post("/login", actions.login, name="ui.login_post")
    r.add_post("/logout", actions.logout, name="ui.logout")
    r.add_get("/static/{name}", static.handle, name="ui.static")
