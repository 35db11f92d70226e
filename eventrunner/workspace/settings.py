"""Typed configuration: pipeline files, eventrunner.toml, EVENTRUNNER_* overrides."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from eventrunner.core.durations import parse_duration
from eventrunner.core.errors import ConfigError, DurationError, Problem
from eventrunner.core.staleness import RetryRule
from eventrunner.workspace.find import STATE_DIR, find_workspace

__all__ = ["STATE_DIR", "find_workspace"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Webhook signature schemes by config name; eventrunner.server.signatures implements each one.
WEBHOOK_SCHEMES = ("standard", "github", "stripe", "slack", "shopify", "gitlab")


def _duration(value: Any) -> Any:
    """Parse duration text for pydantic; leave other types for pydantic to reject."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    return value


Duration = Annotated[float, BeforeValidator(_duration)]


def _blank_is_none(value: Any) -> Any:
    """An empty setting (EVENTRUNNER_RUNTIME_DASK_SCHEDULER="") means "not set"."""
    return None if isinstance(value, str) and not value.strip() else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Model):
    """Exponential backoff with full jitter; after max_attempts the state is dead."""

    max_attempts: int = Field(10, ge=1)
    backoff: Duration = 30.0
    max_backoff: Duration = 3600.0

    def rule(self) -> RetryRule:
        """The same policy as the plain data core decides with."""
        return RetryRule(self.max_attempts, self.backoff, self.max_backoff)


class WebhookSpec(_Model):
    """Webhook intake of a source: POST /hooks/{pipeline}/{source}."""

    secret_env: str | None = None
    allow_unsigned: bool = False
    max_body: int | None = Field(None, ge=1)
    # Signature schemes accepted; None: every scheme whose headers a request carries.
    schemes: tuple[str, ...] | None = None

    @field_validator("schemes")
    @classmethod
    def _known_schemes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one scheme, or leave schemes out to accept any")
        for name in value:
            if name not in WEBHOOK_SCHEMES:
                known = ", ".join(WEBHOOK_SCHEMES)
                raise ValueError(f"unknown webhook scheme {name!r} (known: {known})")
        return tuple(dict.fromkeys(value))  # repeated names mean nothing more


class SourceSpec(_Model):
    """Data that arrives from outside: file drops or webhooks."""

    pattern: str
    webhook: WebhookSpec | None = None


class StageSpec(_Model):
    """A handler with named input patterns and one output pattern."""

    handler: str
    inputs: dict[str, str] = Field(default_factory=dict)
    output: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration | None = None
    retry: RetryPolicy | None = None
    priority: int = 0
    concurrency: int | None = Field(None, ge=1)
    schedule: str | None = None
    version: str | None = None
    # Dask worker resources each call holds while it runs (executor = "dask"), e.g. { GPU = 1 }.
    resources: dict[Annotated[str, Field(min_length=1)], Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict
    )


class PipelineSpec(_Model):
    """One pipeline file."""

    name: str | None = None
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    stages: dict[str, StageSpec] = Field(default_factory=dict)


class ServerSettings(_Model):
    """[server] of eventrunner.toml."""

    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    token_env: str | None = None
    body_limit: int = Field(1024 * 1024, ge=1)
    intake_max_pending: int = Field(1000, ge=1)
    # Slow or idle senders (issue 14.4): time for a request's headers, for a body, for an
    # idle keep-alive connection; connections beyond max_connections are answered 503
    # (default: the open-file limit less a reserve).
    header_timeout: Duration = Field(10.0, gt=0)
    body_timeout: Duration = Field(30.0, gt=0)
    idle_timeout: Duration = Field(60.0, gt=0)
    max_connections: int | None = Field(None, ge=1)
    # Benchmarks only: false acknowledges webhooks before they are durable (lost on power failure).
    intake_fsync: bool = True


class RuntimeSettings(_Model):
    """[runtime] of eventrunner.toml."""

    concurrency: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1)
    executor: Literal["thread", "process", "dask"] = "thread"
    # executor = "dask": the scheduler to use ("tcp://host:8786"); none starts a local cluster
    # of `dask_workers` worker processes. `shared_fs`: workers see the workspace at its path.
    dask_scheduler: Annotated[str | None, BeforeValidator(_blank_is_none)] = None
    dask_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    shared_fs: bool = False
    debounce: Duration = 0.05
    settle: Duration = 0.05
    retry_sweep_interval: Duration = 30.0
    reconcile_interval: Duration = 600.0
    shutdown_grace: Duration = 30.0
    retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy())


ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class AlertSettings(_Model):
    """[alert] of eventrunner.toml: `serve` posts to a webhook when a state goes dead.

    The URL is a secret (a Slack or Discord webhook URL is its own credential), so the file
    names only the environment variable holding it; the URL is never logged or answered."""

    url_env: str
    max_attempts: int = Field(5, ge=1, le=20)  # per alert, the first try included
    backoff: Duration = Field(1.0, gt=0)  # before the second try; doubling after each failure
    max_backoff: Duration = Field(60.0, gt=0)
    timeout: Duration = Field(10.0, gt=0)  # per request

    @field_validator("url_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.match(ENV_NAME_RE, value):
            raise ValueError(
                "must name the environment variable holding the webhook URL (letters, digits"
                ' and _, e.g. "ALERT_WEBHOOK_URL"), not the URL itself'
            )
        return value


class Settings(_Model):
    """Workspace settings, built once and passed down."""

    workspace: Path
    data_root: Path
    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    runtime: RuntimeSettings = Field(default_factory=lambda: RuntimeSettings())
    alert: AlertSettings | None = None

    @property
    def state_dir(self) -> Path:
        """The metadata folder: manifests, failures, holds, index, lock."""
        return self.workspace / STATE_DIR

    @property
    def handlers_dir(self) -> Path:
        """The workspace's own handler modules."""
        return self.workspace / "handlers"


def problems_from_validation(file: str, exc: ValidationError, prefix: str = "") -> list[Problem]:
    """Turn pydantic errors into file/field/reason problems."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(Problem(file, field, msg))
    return out


def _read_table(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict; ConfigError naming the file otherwise."""
    rel = path.name if path.parent.name != "pipelines" else f"pipelines/{path.name}"
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(rel, "", f"cannot parse: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(rel, "", "top level must be a table/object")])
    return data


_ENV_PREFIX = "EVENTRUNNER_"


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """EVENTRUNNER_DATA_ROOT, EVENTRUNNER_SERVER_PORT, EVENTRUNNER_RUNTIME_CONCURRENCY, ..."""
    out: dict[str, Any] = {}
    if f"{_ENV_PREFIX}DATA_ROOT" in env:
        out["data_root"] = env[f"{_ENV_PREFIX}DATA_ROOT"]
    for section, model in (("server", ServerSettings), ("runtime", RuntimeSettings)):
        for field in model.model_fields:
            key = f"{_ENV_PREFIX}{section.upper()}_{field.upper()}"
            if key in env and field != "retry":
                out.setdefault(section, {})[field] = env[key]
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `extra` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    workspace: Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from eventrunner.toml, then EVENTRUNNER_* variables, then flags (overrides)."""
    workspace = workspace.resolve()
    cfg_path = workspace / "eventrunner.toml"
    raw = _read_table(cfg_path) if cfg_path.is_file() else {}
    raw = _merge(raw, _env_overrides(os.environ if env is None else env))
    raw = _merge(raw, overrides or {})
    data_root = Path(raw.pop("data_root", "."))
    raw["workspace"] = workspace
    raw["data_root"] = (workspace / data_root).resolve()
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation("eventrunner.toml", exc)) from None


def pipeline_files(workspace: Path) -> list[Path]:
    """The pipeline files of a workspace, sorted by name."""
    folder = workspace / "pipelines"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".toml", ".json") and p.is_file())


def _validate_pipeline(rel: str, raw: dict[str, Any]) -> tuple[PipelineSpec | None, list[Problem]]:
    """Validate each source and stage on its own, so one bad stage hides no other problem.

    A stage with schema errors is left out of the spec; the rest are still checked further
    (patterns, handlers, cycles), so `validate` reports everything in one pass.
    """
    problems: list[Problem] = []
    tables: dict[str, dict[str, BaseModel]] = {}
    for kind, model in (("sources", SourceSpec), ("stages", StageSpec)):
        table = raw.get(kind, {})
        if not isinstance(table, dict):
            problems.append(Problem(rel, kind, "must be a table"))
            table = {}
        good: dict[str, BaseModel] = {}
        for key, value in table.items():
            try:
                good[key] = model.model_validate(value)
            except ValidationError as exc:
                problems.extend(problems_from_validation(rel, exc, f"{kind}.{key}"))
        tables[kind] = good
    try:
        spec = PipelineSpec.model_validate({**raw, **tables})
    except ValidationError as exc:
        problems.extend(problems_from_validation(rel, exc))
        return None, problems
    return spec, problems


def load_pipeline_specs(
    workspace: Path,
) -> tuple[dict[str, tuple[str, PipelineSpec]], list[Problem]]:
    """Parse every pipeline file: {name: (relative file, spec)} plus the problems found."""
    specs: dict[str, tuple[str, PipelineSpec]] = {}
    problems: list[Problem] = []
    for path in pipeline_files(workspace):
        rel = f"pipelines/{path.name}"
        try:
            raw = _read_table(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        spec, found = _validate_pipeline(rel, raw)
        problems.extend(found)
        if spec is None:
            continue
        name = spec.name or path.stem
        if not NAME_RE.match(name):
            problems.append(
                Problem(rel, "name", f"pipeline name {name!r} must be letters, digits, '-' or '_'")
            )
            continue
        if name in specs:
            problems.append(
                Problem(rel, "name", f"pipeline {name!r} is also defined in {specs[name][0]}")
            )
            continue
        for kind, table in (("stages", spec.stages), ("sources", spec.sources)):
            for key in table:
                if not NAME_RE.match(key):
                    problems.append(
                        Problem(rel, f"{kind}.{key}", "name must be letters, digits, '-' or '_'")
                    )
        specs[name] = (rel, spec)
    if not pipeline_files(workspace):
        problems.append(Problem("pipelines/", "", "no pipeline files (*.toml or *.json)"))
    return specs, problems
