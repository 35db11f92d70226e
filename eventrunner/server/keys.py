"""The application keys of the aiohttp app: one place, so the route modules need not import each other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # types only: the modules below import these keys
    from eventrunner.server.metrics import Metrics
    from eventrunner.server.spool import Spool
    from eventrunner.server.states import StateTable
    from eventrunner.service.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
STATES: web.AppKey[StateTable] = web.AppKey("states")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SPOOL: web.AppKey[Spool] = web.AppKey("spool")
