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
    import jinja2

    from eventrunner.service.runtime import Runtime


# (method, path, handler, route name): the pages, the form posts, the live stream
_ROUTES = (
    ("GET", "/", pages.overview, "ui.overview"),
    ("GET", "/graph", pages.graph, "ui.graph"),
    ("GET", "/stages/{stage}", pages.stage, "ui.stage"),
    ("GET", "/entities/{entity}", pages.entity, "ui.entity"),
    ("GET", "/failures", pages.failures, "ui.failures"),
    ("GET", "/events", pages.events, "ui.events"),
    ("GET", "/activity", pages.activity, "ui.activity"),
    ("GET", "/live", live, "ui.live"),
    ("GET", "/actions/preview", actions.preview, "ui.preview"),
    ("POST", "/actions/{action}", actions.perform, "ui.perform"),
    ("GET", "/login", actions.login_form, "ui.login"),
    ("POST", "/login", actions.login, "ui.login_post"),
    ("POST", "/logout", actions.logout, "ui.logout"),
)


def setup_dashboard(app: web.Application, runtime: Runtime) -> None:
    """Register the pages, forms, stream and assets on the app."""
    settings = runtime.settings
    static = Static()

    built: list[jinja2.Environment] = []

    def templates() -> jinja2.Environment:  # built by the first page, not at start-up
        if not built:
            built.append(environment(static))
        return built[0]

    app[ENV] = templates
    app[SESSIONS] = Sessions(settings.state_dir, settings.server.token_env)
    recent = Recent()
    runtime.events.subscribe(recent.on_event)
    app[RECENT_KEY] = recent
    for method, path, handler, name in _ROUTES:
        add = app.router.add_get if method == "GET" else app.router.add_post  # GET: HEAD too
        add(path, handler, name=name)
    app.router.add_get("/static/{name}", static.handle, name="ui.static")
