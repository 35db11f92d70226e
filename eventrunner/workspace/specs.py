"""The pipeline files' schema (pydantic models) and their loading: imported only when the
workspace is validated, never by a process whose workspace is cached (load.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventrunner.core.errors import ConfigError, Problem
from eventrunner.workspace.settings import (
    NAME_RE,
    Duration,
    RetryPolicy,
    WebhookSpec,
    problems_from_validation,
    read_table,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
            raw = read_table(path)
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
