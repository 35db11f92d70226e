"""GET /metrics in the Prometheus text format (prometheus-client, one registry per app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from eventrunner.run.events import Event, Failed, Succeeded
from eventrunner.server.keys import METRICS, RUNTIME, SPOOL, STATES
from eventrunner.server.states import StateTable

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime


class _StateCollector(Collector):
    """States by stage and state (from the shared StateTable), queue depth, running handlers."""

    def __init__(self, runtime: Runtime, table: StateTable) -> None:
        self.rt = runtime
        self.table = table  # metrics_handler refreshes it (off the collector, which is sync)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rt = self.rt
        states = GaugeMetricFamily(
            "eventrunner_states", "States by stage and state", labels=["stage", "state"]
        )
        queue = GaugeMetricFamily("eventrunner_queue_depth", "States queued for a worker")
        running = GaugeMetricFamily("eventrunner_running", "Handlers running now")
        table = self.table
        if rt.index is not None and rt.engine is not None and rt.ready.is_set():
            if table.full_passes:
                for q, counts in table.counts(list(rt.ws.graph.order)).items():
                    for state, n in counts.items():
                        states.add_metric([q, state], n)
            queue.add_metric([], rt.engine.queue_depth)
            running.add_metric([], len(rt.index.running))
        yield states
        yield queue
        yield running


class _SpoolCollector(Collector):
    """Webhook spool figures: fsync latency (count and sum per batch) and records by outcome.

    The spool keeps running totals, not per-batch samples, so latency is a summary.
    """

    OUTCOMES = (
        "committed",
        "duplicates",
        "intake_full",
        "storage_errors",
        "materialised",
        "materialise_errors",
        "refused",
    )

    def __init__(self, app: web.Application, fsync: bool) -> None:
        self.app = app
        self.fsync = fsync

    def collect(
        self,
    ) -> Iterator[SummaryMetricFamily | CounterMetricFamily | GaugeMetricFamily]:
        spool = self.app.get(SPOOL)
        stats = spool.stats if spool is not None else {}
        batches = int(stats.get("batches", 0)) if self.fsync else 0
        yield SummaryMetricFamily(
            "eventrunner_fsync_seconds",
            "Durability barrier latency: fdatasync of webhook spool batches",
            count_value=batches,
            sum_value=stats.get("fsync_seconds_total", 0.0),
        )
        records = CounterMetricFamily(
            "eventrunner_intake_records", "Webhook spool records by outcome", labels=["outcome"]
        )
        for outcome in self.OUTCOMES:
            records.add_metric([outcome], stats.get(outcome, 0))
        yield records
        yield GaugeMetricFamily(
            "eventrunner_intake_unwritten",
            "Acknowledged webhook bodies not written to their files yet (retried with backoff)",
            value=spool.unwritten if spool is not None else 0,
        )


class Metrics:
    """Counters and histograms fed by runtime events and the webhook intake."""

    def __init__(self, runtime: Runtime, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("eventrunner_events", "Runtime events by kind", ["kind"], registry=r)
        self.executions = Counter(
            "eventrunner_executions",
            "Handler executions by stage and outcome",
            ["stage", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "eventrunner_execution_seconds",
            "Handler execution time",
            ["stage"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.webhooks = Counter(
            "eventrunner_webhook_requests",
            "Webhook requests by pipeline, source and status",
            ["pipeline", "source", "status"],
            registry=r,
        )
        r.register(_StateCollector(runtime, app[STATES]))
        r.register(_SpoolCollector(app, runtime.settings.server.intake_fsync))
        runtime.events.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        self.events.labels(event.kind.value).inc()
        if isinstance(event, Succeeded | Failed):
            self.executions.labels(event.stage, event.kind.value).inc()
        if isinstance(event, Succeeded):
            self.duration.labels(event.stage).observe(event.duration_s)


async def metrics_handler(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    rt = request.app[RUNTIME]
    if rt.index is not None and rt.ready.is_set():
        await request.app[STATES].get()  # the state gauges: a cooperative pass when due
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application, runtime: Runtime) -> None:
    """Register /metrics and the event sink that feeds it."""
    app[METRICS] = Metrics(runtime, app)
    app.router.add_get("/metrics", metrics_handler)
