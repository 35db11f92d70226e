"""Request and response models of the HTTP API: they validate requests and generate the OpenAPI document."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from eventrunner.run import report
from eventrunner.service.history import Execution


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvalidateRequest(_Body):
    """Force re-runs of a stage (some entities or all), optionally everything downstream."""

    stage: str = Field(min_length=1)
    entities: list[str] | None = None
    downstream: bool = False


class RetryRequest(_Body):
    """Clear backoff and dead states (all stages when `stage` is omitted)."""

    stage: str | None = Field(None, min_length=1)
    entities: list[str] | None = None


class HoldRequest(_Body):
    """Hold or release a stage's states (all entities when `entities` is omitted)."""

    stage: str = Field(min_length=1)
    entities: list[str] | None = None


class RunRequest(_Body):
    """`eventrunner run` while serving: check the selection now, answer once the server is idle."""

    stage: str | None = Field(None, min_length=1)
    entity: str | None = Field(None, min_length=1)


def _run_report_model() -> type[BaseModel]:
    """The wire shape of the one run-report type (run/report.py), for validation and OpenAPI:
    its printed fields, each required unless it may be null."""
    hints = get_type_hints(report.RunReport)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], None if f.default is None else ...)
        for f in dataclasses.fields(report.RunReport)
        if f.metadata.get("wire", True)
    }
    return create_model(
        "RunReport",
        __doc__="What ran between the request and the server going idle (other work included).",
        **fields,
    )


RunReport = _run_report_model()


class PruneRequest(_Body):
    """Delete outputs and manifests of orphaned states (dry_run: only list them)."""

    dry_run: bool = False


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error answer: {"error": {"code", "message"}}."""

    error: ErrorDetail


class Reason(BaseModel):
    code: str
    message: str
    detail: dict[str, Any] | None = None


class StateRow(BaseModel):
    stage: str
    entity: str
    state: str
    reasons: list[Reason]


class EntitiesResponse(BaseModel):
    entities: list[StateRow]
    total: int
    limit: int
    offset: int


class ExplainRow(StateRow):
    manifest: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None


class ExplainResponse(BaseModel):
    entity: str
    stages: list[ExplainRow]


class LogsResponse(BaseModel):
    """What the last attempt of a state printed and logged (`eventrunner logs`)."""

    stage: str
    entity: str
    attempt: int | None  # None: it has not run yet
    outcome: str | None  # "succeeded" or "failed"
    at: float | None = None  # the attempt's manifest `started` or failure `last_failed`
    output: str  # "" when it printed nothing; the last 64 KiB, secrets masked


class StageCounts(BaseModel):
    stages: dict[str, dict[str, int]]


class PipelinesResponse(BaseModel):
    pipelines: dict[str, StageCounts]


class PipelineStatus(BaseModel):
    pipeline: str
    stages: dict[str, dict[str, int]]
    running: list[dict[str, Any]]
    recent_failures: list[dict[str, Any]]
    queue_depth: int
    warnings: list[str] = []  # sources with no folder or no file (see run/noops.py)
    # ?check=1: {"stage", "entity", "state", "reason", "held"} of each state not fresh
    not_fresh: list[dict[str, Any]] | None = None


class WebhookAccepted(BaseModel):
    entity: str
    path: str
    event_id: str


class WebhookDuplicate(BaseModel):
    duplicate: bool = Field(True)


class WebhookChallenge(BaseModel):
    """The answer to a signed handshake (Slack's URL verification): nothing is stored."""

    challenge: str


class Health(BaseModel):
    status: str
    ready: bool | None = None
    unwritten_webhooks: int | None = None  # with status "degraded"
    reason: str | None = None


class HistoryResponse(BaseModel):
    """Recent executions, newest first; `next_before` pages on (None on the last page)."""

    executions: list[Execution]  # the journal's own record type: pydantic reads dataclasses
    kept: int
    limit: int
    next_before: int | None = None
