"""Typed configuration: eventrunner.toml, EVENTRUNNER_* overrides, flags (pipeline files: specs.py).

The settings are frozen standard dataclasses that pydantic validates (TypeAdapter, with the
constraints below as field metadata), so a process given already validated settings (the
workspace cache, load.py) never imports pydantic: ~0.3 s of CPU of a one-change `run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from eventrunner.core.durations import parse_duration
from eventrunner.core.errors import ConfigError, DurationError, Problem
from eventrunner.core.staleness import RetryRule
from eventrunner.workspace.find import STATE_DIR, find_workspace

if TYPE_CHECKING:
    from pydantic import TypeAdapter, ValidationError

__all__ = ["STATE_DIR", "find_workspace"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Webhook signature schemes by config name; eventrunner.server.signatures implements each one.
WEBHOOK_SCHEMES = ("standard", "github", "stripe", "slack", "shopify", "gitlab")
FORBID_EXTRA: Any = {"extra": "forbid"}  # pydantic's ConfigDict is a plain dict


class _Checked:
    """Field metadata that pydantic applies when it validates: `Field(**constraints)`,
    `BeforeValidator(fn)` or `AfterValidator(fn)`, built only then (pydantic's own
    `__get_pydantic_core_schema__` hook), so that importing this module imports no pydantic."""

    __slots__ = ("arg", "name")

    def __init__(self, name: str, arg: Any) -> None:
        self.name, self.arg = name, arg

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], Any]) -> Any:
        import pydantic

        kind = getattr(pydantic, self.name)
        meta = kind(**self.arg) if isinstance(self.arg, dict) else kind(self.arg)
        return handler(Annotated[source, meta])


def _field(**constraints: Any) -> _Checked:
    return _Checked("Field", constraints)


def _duration(value: Any) -> Any:
    """Parse duration text for pydantic; leave other types for pydantic to reject."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    return value


Duration = Annotated[float, _Checked("BeforeValidator", _duration)]
PositiveDuration = Annotated[float, _Checked("BeforeValidator", _duration), _field(gt=0)]
AtLeastOne = Annotated[int, _field(ge=1)]


def _blank_is_none(value: Any) -> Any:
    """An empty setting (EVENTRUNNER_RUNTIME_DASK_SCHEDULER="") means "not set"."""
    return None if isinstance(value, str) and not value.strip() else value


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; after max_attempts the state is dead."""

    __pydantic_config__ = FORBID_EXTRA

    max_attempts: AtLeastOne = 10
    backoff: Duration = 30.0
    max_backoff: Duration = 3600.0

    def rule(self) -> RetryRule:
        """The same policy as the plain data core decides with."""
        return RetryRule(self.max_attempts, self.backoff, self.max_backoff)


def _known_schemes(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("name at least one scheme, or leave schemes out to accept any")
    for name in value:
        if name not in WEBHOOK_SCHEMES:
            known = ", ".join(WEBHOOK_SCHEMES)
            raise ValueError(f"unknown webhook scheme {name!r} (known: {known})")
    return tuple(dict.fromkeys(value))  # repeated names mean nothing more


@dataclass(frozen=True)
class WebhookSpec:
    """Webhook intake of a source: POST /hooks/{pipeline}/{source}."""

    __pydantic_config__ = FORBID_EXTRA

    secret_env: str | None = None
    allow_unsigned: bool = False
    max_body: AtLeastOne | None = None
    # Signature schemes accepted; None: every scheme whose headers a request carries.
    schemes: Annotated[tuple[str, ...] | None, _Checked("AfterValidator", _known_schemes)] = None


@dataclass(frozen=True)
class ServerSettings:
    """[server] of eventrunner.toml."""

    __pydantic_config__ = FORBID_EXTRA

    host: str = "127.0.0.1"
    port: Annotated[int, _field(ge=0, le=65535)] = 8700
    token_env: str | None = None
    body_limit: AtLeastOne = 1024 * 1024
    intake_max_pending: AtLeastOne = 1000
    # Slow or idle senders (issue 14.4): time for a request's headers, for a body, for an
    # idle keep-alive connection; connections beyond max_connections are answered 503
    # (default: the open-file limit less a reserve).
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 30.0
    idle_timeout: PositiveDuration = 60.0
    max_connections: AtLeastOne | None = None
    # Benchmarks only: false acknowledges webhooks before they are durable (lost on power failure).
    intake_fsync: bool = True


@dataclass(frozen=True)
class RuntimeSettings:
    """[runtime] of eventrunner.toml."""

    __pydantic_config__ = FORBID_EXTRA

    concurrency: AtLeastOne = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    executor: Literal["thread", "process", "dask"] = "thread"
    # executor = "dask": the scheduler to use ("tcp://host:8786"); none starts a local cluster
    # of `dask_workers` worker processes. `shared_fs`: workers see the workspace at its path.
    dask_scheduler: Annotated[str | None, _Checked("BeforeValidator", _blank_is_none)] = None
    dask_workers: AtLeastOne = field(default_factory=lambda: os.cpu_count() or 1)
    shared_fs: bool = False
    # `run` with the thread executor: every thread on one core while calls average < 5 ms
    one_core: bool = True
    debounce: Duration = 0.05
    settle: Duration = 0.05
    retry_sweep_interval: Duration = 30.0
    reconcile_interval: Duration = 600.0
    shutdown_grace: Duration = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _env_name(value: str) -> str:
    if not re.match(ENV_NAME_RE, value):
        raise ValueError(
            "must name the environment variable holding the webhook URL (letters, digits"
            ' and _, e.g. "ALERT_WEBHOOK_URL"), not the URL itself'
        )
    return value


@dataclass(frozen=True)
class AlertSettings:
    """[alert] of eventrunner.toml: `serve` posts to a webhook when a state goes dead.

    The URL is a secret (a Slack or Discord webhook URL is its own credential), so the file
    names only the environment variable holding it; the URL is never logged or answered."""

    __pydantic_config__ = FORBID_EXTRA

    url_env: Annotated[str, _Checked("AfterValidator", _env_name)]
    max_attempts: Annotated[int, _field(ge=1, le=20)] = 5  # per alert, the first try included
    backoff: PositiveDuration = 1.0  # before the second try; doubling after each failure
    max_backoff: PositiveDuration = 60.0
    timeout: PositiveDuration = 10.0  # per request


@dataclass(frozen=True)
class Settings:
    """Workspace settings, built once and passed down."""

    __pydantic_config__ = FORBID_EXTRA

    workspace: Path
    data_root: Path
    server: ServerSettings = field(default_factory=ServerSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    alert: AlertSettings | None = None

    @property
    def state_dir(self) -> Path:
        """The metadata folder: manifests, failures, holds, index, lock."""
        return self.workspace / STATE_DIR

    @property
    def handlers_dir(self) -> Path:
        """The workspace's own handler modules."""
        return self.workspace / "handlers"


@cache
def validator(kind: type[Any]) -> TypeAdapter[Any]:
    """pydantic's validator of one of these dataclasses (or a spec model), built once."""
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def problems_from_validation(file: str, exc: ValidationError, prefix: str = "") -> list[Problem]:
    """Turn pydantic errors into file/field/reason problems."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown field"
        out.append(Problem(file, field, msg))
    return out


def read_table(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict; ConfigError naming the file otherwise."""
    import tomllib  # here: a cached workspace reads no TOML

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
        for name in (f.name for f in dataclasses.fields(model)):
            key = f"{_ENV_PREFIX}{section.upper()}_{name.upper()}"
            if key in env and name != "retry":
                out.setdefault(section, {})[name] = env[key]
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
    return settings_with_root(workspace, overrides, env)[0]


def settings_with_root(
    workspace: Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Settings, str]:
    """load_settings, and the data root as given (relative to the workspace) before resolving."""
    workspace = workspace.resolve()
    cfg_path = workspace / "eventrunner.toml"
    raw = read_table(cfg_path) if cfg_path.is_file() else {}
    raw = _merge(raw, _env_overrides(os.environ if env is None else env))
    raw = _merge(raw, overrides or {})
    data_root = Path(raw.pop("data_root", "."))
    raw["workspace"] = workspace
    raw["data_root"] = (workspace / data_root).resolve()
    from pydantic import ValidationError

    try:
        settings: Settings = validator(Settings).validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation("eventrunner.toml", exc)) from None
    return settings, str(data_root)
