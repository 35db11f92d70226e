"""GET /api/openapi.json: an OpenAPI 3.1 document built from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from eventrunner import __version__
from eventrunner.core.staleness import STATES
from eventrunner.server import models

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


ERR = {
    "400": _json(models.ErrorResponse, "bad request"),
    "401": _json(models.ErrorResponse, "missing or wrong bearer token"),
    "404": _json(models.ErrorResponse, "unknown pipeline, stage or entity"),
}
PIPELINE = {
    "name": "pipeline",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "pipeline name, or _ for every pipeline",
}
ENTITY = {**PIPELINE, "name": "entity", "description": "entity id"}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: type[BaseModel] | None = None,
    errors: dict[str, Any] | None = None,
    secured: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {**ok, **(errors if errors is not None else ERR)},
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        op["responses"]["422"] = _json(models.ErrorResponse, "body failed validation")
    if not secured:
        op["security"] = []
    return op


def _unstructured(summary: str, description: str, media: str, kind: str) -> dict[str, Any]:
    """A GET whose answer has no model: a stream, a text format, a document."""
    content = {media: {"schema": {"type": kind}}}
    return {
        "get": _op(
            summary,
            {"200": {"description": description, "content": content}},
            errors={"401": ERR["401"]},
        )
    }


def build_document() -> dict[str, Any]:
    """The whole document; every route of the app is described here."""
    all_models: list[type[BaseModel]] = [
        models.InvalidateRequest,
        models.RetryRequest,
        models.HoldRequest,
        models.RunRequest,
        models.PruneRequest,
        models.RunReport,
        models.ErrorResponse,
        models.EntitiesResponse,
        models.ExplainResponse,
        models.LogsResponse,
        models.PipelinesResponse,
        models.PipelineStatus,
        models.WebhookAccepted,
        models.WebhookDuplicate,
        models.WebhookChallenge,
        models.Health,
        models.HistoryResponse,
    ]
    pairs: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (m, "validation") for m in all_models
    ]
    _, schemas = models_json_schema(pairs, ref_template=REF)

    def q(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": desc,
        }

    def manage(summary: str, model: type[BaseModel]) -> dict[str, Any]:
        ok = {
            "200": {
                "description": "done",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        }
        return {"post": _op(summary, ok, params=[PIPELINE], body=model)}

    hook_errors = {
        "400": _json(models.ErrorResponse, "entity variables fail the source pattern"),
        "401": _json(models.ErrorResponse, "bad or missing signature"),
        "404": _json(models.ErrorResponse, "unknown pipeline or source"),
        "408": _json(models.ErrorResponse, "body not received within body_timeout"),
        "413": _json(models.ErrorResponse, "body over the limit"),
        "503": _json(
            models.ErrorResponse, "intake full or storage failing; retry after Retry-After"
        ),
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op(
                "alive (status degraded while acknowledged webhooks wait for their files)",
                {"200": _json(models.Health, "alive")},
                errors={},
                secured=False,
            )
        },
        "/readyz": {
            "get": _op(
                "ready once the start-up reconcile finished",
                {
                    "200": _json(models.Health, "ready"),
                    "503": _json(models.Health, "starting, or degraded: webhooks not written yet"),
                },
                errors={},
                secured=False,
            )
        },
        "/api/pipelines": {
            "get": _op(
                "pipelines with per-stage counts by state",
                {"200": _json(models.PipelinesResponse, "counts")},
                errors={"401": ERR["401"]},
            )
        },
        "/api/pipelines/{pipeline}/status": {
            "get": _op(
                "one pipeline: counts, running work, recent failures",
                {"200": _json(models.PipelineStatus, "status")},
                params=[
                    PIPELINE,
                    q("check", {"type": "boolean"}, "also list every state that is not fresh"),
                ],
            )
        },
        "/api/pipelines/{pipeline}/entities": {
            "get": _op(
                "states with their reasons",
                {"200": _json(models.EntitiesResponse, "a page of states")},
                params=[
                    PIPELINE,
                    q("stage", {"type": "string"}, "stage name"),
                    q("state", {"type": "string", "enum": list(STATES)}, "state"),
                    q("limit", {"type": "integer", "minimum": 0}, "page size (max 1000)"),
                    q("offset", {"type": "integer", "minimum": 0}, "page start"),
                ],
            )
        },
        "/api/pipelines/{pipeline}/entities/{entity}": {
            "get": _op(
                "explain one entity across stages",
                {"200": _json(models.ExplainResponse, "explanation")},
                params=[
                    PIPELINE,
                    ENTITY,
                    q("stage", {"type": "string"}, "only this stage"),
                ],
            )
        },
        "/api/pipelines/{pipeline}/entities/{entity}/logs": {
            "get": _op(
                "what the last attempt of (stage, entity) printed and logged",
                {"200": _json(models.LogsResponse, "captured output")},
                params=[
                    PIPELINE,
                    ENTITY,
                    q("stage", {"type": "string"}, "the stage") | {"required": True},
                ],
            )
        },
        "/api/pipelines/{pipeline}/invalidate": manage("force re-runs", models.InvalidateRequest),
        "/api/pipelines/{pipeline}/retry": manage(
            "clear backoff and dead states", models.RetryRequest
        ),
        "/api/pipelines/{pipeline}/hold": manage("manual hold", models.HoldRequest),
        "/api/pipelines/{pipeline}/release": manage("release a hold", models.HoldRequest),
        "/api/pipelines/{pipeline}/prune": manage(
            "delete orphaned states' outputs and manifests (workspace-wide)", models.PruneRequest
        ),
        "/api/pipelines/{pipeline}/run": {
            "post": _op(
                "check the selection now and answer once nothing is queued or running",
                {"200": _json(models.RunReport, "what ran meanwhile")},
                params=[PIPELINE],
                body=models.RunRequest,
            )
        },
        "/api/history": {
            "get": _op(
                "recent executions from the history journal, newest first",
                {"200": _json(models.HistoryResponse, "executions")},
                params=[
                    q("pipeline", {"type": "string"}, "only this pipeline's stages"),
                    q("stage", {"type": "string"}, "stage name or pipeline.stage"),
                    q("entity", {"type": "string"}, "entity id"),
                    q(
                        "outcome",
                        {"type": "string", "enum": ["succeeded", "failed", "dead"]},
                        "outcome",
                    ),
                    q("limit", {"type": "integer", "minimum": 0}, "at most this many (max 1000)"),
                    q("before", {"type": "integer", "minimum": 0}, "only entries below this seq"),
                ],
                errors={"400": ERR["400"], "401": ERR["401"], "404": ERR["404"]},
            )
        },
        "/api/events": _unstructured(
            "server-sent events", "text/event-stream", "text/event-stream", "string"
        ),
        "/metrics": _unstructured("Prometheus metrics", "text format", "text/plain", "string"),
        "/api/openapi.json": _unstructured(
            "this document", "OpenAPI 3.1", "application/json", "object"
        ),
        "/hooks/{pipeline}/{source}": {
            "post": {
                "summary": "webhook intake: the body becomes the source entity named by the query parameters",
                "security": [],
                "parameters": [
                    {
                        "name": "pipeline",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "source",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "202": _json(models.WebhookAccepted, "durably stored"),
                    "200": {
                        "description": "already received, or Slack's URL verification answered",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "anyOf": [
                                        _ref(models.WebhookDuplicate),
                                        _ref(models.WebhookChallenge),
                                    ]
                                }
                            }
                        },
                    },
                    **hook_errors,
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventrunner",
            "version": __version__,
            "description": "Keep derived files fresh: management API and webhook intake.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_document())
