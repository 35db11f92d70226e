"""The application keys of the aiohttp app: one place, so the route modules need not import each other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # types only: the modules below import these keys
    from eventrunner.server.metrics import Metrics
    from eventrunner.server.spool import Spool
    from eventrunner.server.states import StateTable
    from eventrunner.service.history import History
    from eventrunner.service.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
STATES: web.AppKey[StateTable] = web.AppKey("states")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SPOOL: web.AppKey[Spool] = web.AppKey("spool")
HISTORY: web.AppKey[History] = web.AppKey("history")
# Set by the dashboard's guard when it has authorised a request itself: its own pages (public
# ones, or with a signed-in session cookie), and API reads by a signed-in browser (EventSource
# cannot send a Bearer token). Never set for a POST to the API.
SESSION_OK: web.RequestKey[bool] = web.RequestKey("session_ok")
