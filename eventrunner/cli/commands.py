"""CLI commands that read or steer state (status, entities, explain, invalidate, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventrunner.cli import show
from eventrunner.cli.common import (
    hold_workspace,
    print_json,
    print_warnings,
    read_index,
    workspace_path,
)
from eventrunner.core.durations import format_time
from eventrunner.core.errors import UnknownName, UsageError, did_you_mean
from eventrunner.run import queries


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


_STYLE = {
    "fresh": "green",
    "stale": "yellow",
    "running": "cyan",
    "failed": "red",
    "dead": "bold red",
    "held": "magenta",
    "waiting": "blue",
    "orphaned": "dim",
}


def _status_from_server(args: argparse.Namespace) -> dict[str, Any] | None:
    """The counts a running server keeps (milliseconds, where evaluating every state here
    takes seconds at 100,000 entities), with --check its not-fresh states; None when no
    server answers."""
    data: dict[str, Any] | None = _from_server(args, "/api/pipelines")
    if data is None:
        return None
    if args.pipeline is not None:
        if args.pipeline not in data["pipelines"]:
            have = ", ".join(sorted(data["pipelines"])) or "none"
            hint = did_you_mean(args.pipeline, data["pipelines"])
            raise UnknownName(f"no pipeline {args.pipeline!r}{hint} (have: {have})")
        data = {"pipelines": {args.pipeline: data["pipelines"][args.pipeline]}}
    from urllib.parse import quote

    path = f"/api/pipelines/{quote(args.pipeline or '_', safe='')}/status"
    detail = _from_server(args, path + ("?check=1" if args.check else ""))
    if detail is None:
        return None  # gone meanwhile: ask the disk
    data["warnings"] = detail.get("warnings", [])
    if args.check:
        data["not_fresh"] = detail["not_fresh"]
    return data


def _status_on_disk(args: argparse.Namespace) -> dict[str, Any]:
    """Counts by state from the state on disk (every state evaluated once); with --check the
    ones that are not fresh, from the same evaluation."""
    from collections import Counter

    from eventrunner.run import noops
    from eventrunner.run.evaluate import Evaluator
    from eventrunner.run.gate import IGNORED, Gate

    _, index = read_index(args)
    ev = Evaluator(index)
    gate = Gate(index, ev)
    stages = queries.resolve_stages(index.ws.graph, None, args.pipeline)
    tally: dict[str, Counter[str]] = {q: Counter() for q in stages}
    failed: dict[str, list[str]] = {q: [] for q in stages}
    for row in queries.iter_rows(index, stages, ev):
        tally[row.stage][row.verdict.state] += 1
        if row.verdict.state == "failed":
            failed[row.stage].append(row.entity)
        if args.check and row.verdict.state not in IGNORED:
            gate.check([(row.stage, row.entity, row.values)])
    counts = {q: dict(c) for q, c in tally.items()}
    data = queries.status(index, args.pipeline, counts=counts, failed=failed)
    data["warnings"] = noops.source_warnings(index) + list(noops.stray_outputs(index).values())
    if args.check:
        data["not_fresh"] = gate.entries()
    return data


def cmd_status(args: argparse.Namespace) -> int:
    """Counts by state; with --check exit 1 when a state is not fresh (held ones allowed with
    --allow-held)."""
    from eventrunner.run.gate import blocking
    from eventrunner.run.report import not_fresh_lines

    data = _status_from_server(args) or _status_on_disk(args)
    print_warnings(data.pop("warnings"))  # on stderr: the --json shape stays as documented
    code = 1 if args.check and blocking(data["not_fresh"], args.allow_held) else 0
    if args.json:
        print_json(data)
        return code
    for p, pdata in data["pipelines"].items():
        rows = []
        for s, counts in pdata["stages"].items():
            shown = [f"[{_STYLE[k]}]{k} {n}[/]" for k, n in counts.items() if n]
            if (at := pdata.get("next_retry", {}).get(s)) is not None:
                shown.append(f"next retry at {format_time(at)}")  # local time, never epoch
            rows.append([s, ", ".join(shown) or "no entities yet"])
        _table(f"pipeline {p}", ["stage", "states"], rows)
    if args.check:
        lines = not_fresh_lines(data["not_fresh"], args.allow_held)
        print("\n".join(lines or ["every state is fresh"]))
    return code


def _reasons_line(row: queries.Row) -> str:
    """The reasons column: a failed or dead state shows its failure and retry time only (why
    it would run besides, e.g. "never produced", is for `explain`: issue 10.4)."""
    reasons = row.verdict.reasons
    if row.verdict.state in ("failed", "dead"):
        reasons = reasons[:1]
    return "; ".join(x.message for x in reasons)


def cmd_entities(args: argparse.Namespace) -> int:
    _, index = read_index(args)
    rows = queries.entities(
        index, pipeline=args.pipeline, stage=args.stage, state=args.state, limit=args.limit
    )
    if args.json:
        print_json({"entities": [r.to_json() for r in rows]})
        return 0
    _table(
        "states",
        ["stage", "entity", "state", "reasons"],
        [
            [
                r.stage,
                r.entity,
                f"[{_STYLE[r.verdict.state]}]{r.verdict.state}[/]",
                _reasons_line(r),
            ]
            for r in rows
        ],
    )
    failed = [(r, index.failures[r.stage].get(r.entity)) for r in rows]
    lines = [
        (
            f"{r.stage} {r.entity}:",
            show.traceback_lines(f.traceback, index.ws.settings.workspace, full=False),
        )
        for r, f in failed
        if f is not None and f.traceback
    ]
    if lines:
        print(
            "failures, the handler's frames first (`eventrunner explain ID` for the whole traceback):"
        )
        for head, tb in lines[: show.LIMIT]:
            print("\n".join([head, *(f"  {x}" for x in tb)]))
    return 0


def _from_server(args: argparse.Namespace, path: str) -> Any:
    """GET `path` from a running server of this workspace; None when none answers."""
    from eventrunner.cli.client import get_from_server, server_address
    from eventrunner.core.errors import ServerUnavailable
    from eventrunner.workspace.settings import load_settings

    settings = load_settings(workspace_path(args))
    addr = server_address(settings.state_dir)
    if addr is None:
        return None
    try:
        return get_from_server(settings, addr, path)
    except ServerUnavailable:
        return None


def cmd_explain(args: argparse.Namespace) -> int:
    from urllib.parse import quote, urlencode

    query = f"?{urlencode({'stage': args.stage})}" if args.stage else ""
    served = _from_server(
        args,
        f"/api/pipelines/{quote(args.pipeline or '_', safe='')}/entities/"
        f"{quote(args.entity, safe='')}{query}",
    )
    if served is not None:
        data = served["stages"]  # the server's index: no load of every state here
    else:
        _, index = read_index(args)
        data = queries.explain(index, args.entity, args.stage, args.pipeline)
    if args.json:
        print_json({"entity": args.entity, "stages": data})
        return 0
    print("\n".join(show.explained(data, workspace_path(args))))
    return 0


def _mutate(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    """Run a state change through a running server's API, or here under the lock: the same
    management call either way (management.manage)."""
    from eventrunner.cli.client import call_server, server_address
    from eventrunner.run import management
    from eventrunner.workspace.settings import load_settings

    settings = load_settings(workspace_path(args))
    addr = server_address(settings.state_dir)
    if addr is not None:
        result = call_server(settings, addr, action, dict(body))
    else:
        result = hold_workspace(args, action, lambda s: management.manage(s, action, body))
    if args.json:
        print_json(result)
    else:
        print("\n".join(show.managed(action, result, served=addr is not None)))
    return 0


def cmd_invalidate(args: argparse.Namespace) -> int:
    body = {"stage": args.stage, "entities": args.entities or None, "downstream": args.downstream}
    return _mutate(args, "invalidate", body)


def cmd_retry(args: argparse.Namespace) -> int:
    if args.entities and not args.stage:
        raise UsageError("retry: entity ids need a stage")
    return _mutate(args, "retry", {"stage": args.stage, "entities": args.entities or None})


def cmd_hold(args: argparse.Namespace) -> int:
    return _mutate(args, "hold", {"stage": args.stage, "entities": args.entities or None})


def cmd_release(args: argparse.Namespace) -> int:
    return _mutate(args, "release", {"stage": args.stage, "entities": args.entities or None})


def cmd_prune(args: argparse.Namespace) -> int:
    from eventrunner.cli.client import call_server, server_address
    from eventrunner.run import management
    from eventrunner.workspace.settings import load_settings

    settings = load_settings(workspace_path(args))
    addr = None if args.dry_run else server_address(settings.state_dir)
    if addr is not None:
        # A running server owns the workspace: it prunes (between events, on its loop).
        pruned = call_server(settings, addr, "prune", {"dry_run": False})["pruned"]
    else:
        pruned = hold_workspace(
            args,
            "prune",
            lambda s: management.prune_orphans(s, args.dry_run)["pruned"],
            read_only=args.dry_run,
        )
    if args.json:
        print_json({"pruned": pruned, "dry_run": args.dry_run})
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(pruned)} orphaned state(s)")
        for p in pruned:
            print(f"  {p['stage']} {p['entity']}: {', '.join(p['outputs']) or '(no outputs)'}")
            for k in p.get("kept", []):
                print(f"    kept {k['path']}: the output of {k['stage']} {k['entity']}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from eventrunner.cli.graphviz import as_json, render
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(workspace_path(args))
    if args.json:
        print_json(as_json(ws.graph))
    else:
        print(render(ws.graph, args.format))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from eventrunner.cli.scaffold import scaffold

    target: Path = args.dir.resolve()
    written = scaffold(target)
    print(f"created a workspace in {target} ({len(written)} files). Try:")
    print(f"  cd {target} && eventrunner run && eventrunner status")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from eventrunner.cli.serve import serve_command
    except ImportError:
        print("eventrunner: serve is not available in this build", file=sys.stderr)
        return 2
    return serve_command(args)


COMMANDS_REST: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "entities": cmd_entities,
    "explain": cmd_explain,
    "invalidate": cmd_invalidate,
    "retry": cmd_retry,
    "hold": cmd_hold,
    "release": cmd_release,
    "prune": cmd_prune,
    "graph": cmd_graph,
    "init": cmd_init,
    "serve": cmd_serve,
}
