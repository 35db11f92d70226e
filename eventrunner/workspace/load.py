"""A loaded, validated workspace: settings, stage graph, handler locations and code identities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventrunner.core.errors import ConfigError, HandlerError, Problem
from eventrunner.core.graph import Graph
from eventrunner.core.redact import remember_env
from eventrunner.core.reserved import Reserved, data_root_problem, reserved_paths
from eventrunner.state.hashing import combine, hash_json
from eventrunner.workspace import loader
from eventrunner.workspace.settings import Settings, settings_with_root


@dataclass
class Workspace:
    """Everything known about a workspace before looking at data or state."""

    settings: Settings
    graph: Graph
    handlers: dict[str, loader.HandlerRef] = field(default_factory=dict)
    code: dict[str, str] = field(default_factory=dict)  # stage -> code identity (+ version)
    params: dict[str, str] = field(default_factory=dict)  # stage -> params hash
    modules: dict[str, str] = field(default_factory=dict)  # stage -> hash of its module file

    @property
    def root(self) -> Path:
        """The workspace folder."""
        return self.settings.workspace

    @property
    def reserved(self) -> Reserved:
        """The workspace's code and state relative to the data root: never data."""
        return reserved_paths(self.settings.workspace, self.settings.data_root)


def load_workspace(
    path: Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    import_handlers: bool = False,
    cached: bool = False,
) -> Workspace:
    """Load and validate; ConfigError lists every problem with file, field and reason.

    With `import_handlers` (the `validate` command) each handler module is also imported, so an
    import-time error is reported with file and line instead of failing every run. `cached`
    (`run`, `serve`): use and keep the workspace cache (cache.py) while nothing it was loaded
    from changed.
    """
    if not cached or import_handlers:
        return _load(path, overrides, env, import_handlers)[0]
    from eventrunner.workspace import cache

    workspace = path.resolve()
    wanted = cache.key(workspace, overrides, env)
    ws = cache.read(workspace, wanted)
    if ws is not None:
        _remember_secrets(ws)
        return ws
    before = cache.stats(workspace)  # before reading: an edit from now on makes the next miss
    ws, data_root = _load(workspace, overrides, env, False)
    cache.write(ws, wanted, before, data_root)
    return ws


def _load(
    path: Path, overrides: Mapping[str, Any] | None, env: Mapping[str, str] | None, imports: bool
) -> tuple[Workspace, str]:
    """The workspace validated afresh, and its data root as given."""
    from eventrunner.workspace.specs import load_pipeline_specs
    from eventrunner.workspace.stages import build_graph

    settings, data_root = settings_with_root(path, overrides, env)
    specs, problems = load_pipeline_specs(settings.workspace)
    if reason := data_root_problem(settings.workspace, settings.data_root):
        problems.append(Problem("eventrunner.toml", "data_root", reason))
    reserved = reserved_paths(settings.workspace, settings.data_root)
    graph, more = build_graph(specs, settings.runtime.retry, reserved)
    problems += more
    ws = Workspace(settings, graph)
    _remember_secrets(ws)
    problems += _check_handlers(ws, imports)
    problems += _check_schedules(graph)
    problems += _check_webhooks(specs)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.file))
    return ws, data_root


def _remember_secrets(ws: Workspace) -> None:
    """Known before anything runs, so that no error, log line or answer of this process shows
    them, whichever part read them (issue 14.3)."""
    graph, settings = ws.graph, ws.settings
    hooks = [s.webhook.secret_env for s in graph.sources.values() if s.webhook is not None]
    remember_env([settings.server.token_env, *hooks])


def _check_handlers(ws: Workspace, import_handlers: bool) -> list[Problem]:
    from eventrunner.workspace import codeid

    problems = []
    for q, stage in ws.graph.stages.items():
        field_ = f"stages.{stage.name}.handler"
        try:
            ref = loader.resolve(stage.handler, ws.settings.handlers_dir)
        except HandlerError as exc:
            problems.append(Problem(stage.file, field_, str(exc)))
            continue
        reason = loader.check_signature(ref, [i.name for i in stage.inputs])
        if reason:
            problems.append(Problem(stage.file, field_, reason))
            continue
        try:
            identity = codeid.code_identity(ref.path, ref.function, ref.root)
        except HandlerError as exc:
            problems.append(Problem(stage.file, field_, str(exc)))
            continue
        if import_handlers and (reason := loader.import_problem(ref)):
            problems.append(Problem(stage.file, field_, reason))
            continue
        ws.handlers[q] = ref
        ws.modules[q] = ref.source_hash()
        ws.code[q] = combine(identity, stage.version or "")
        ws.params[q] = hash_json(stage.params)
    return problems


def _check_schedules(graph: Graph) -> list[Problem]:
    scheduled = [s for s in graph.stages.values() if s.schedule is not None]
    if not scheduled:
        return []
    from eventrunner.workspace.cron import validate_cron

    problems = []
    for stage in scheduled:
        reason = validate_cron(stage.schedule or "")
        if reason:
            problems.append(
                Problem(
                    stage.file,
                    f"stages.{stage.name}.schedule",
                    f"bad cron {stage.schedule!r}: {reason}",
                )
            )
    return problems


def _check_webhooks(specs: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for file, spec in specs.values():
        for name, src in spec.sources.items():
            hook = src.webhook
            if hook is not None and not hook.secret_env and not hook.allow_unsigned:
                problems.append(
                    Problem(
                        file,
                        f"sources.{name}.webhook",
                        "a webhook needs secret_env, or allow_unsigned = true to accept unsigned requests",
                    )
                )
            elif hook is not None and not hook.secret_env and hook.schemes is not None:
                problems.append(
                    Problem(
                        file,
                        f"sources.{name}.webhook.schemes",
                        "schemes needs secret_env: without a secret no signature is checked",
                    )
                )
    return problems
