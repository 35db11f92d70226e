"""The `eventrunner` command line. Imports stay lazy: a no-change `run` is a whole process."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eventrunner.core.errors import (
    ConfigError,
    EventRunnerError,
    ExecutorUnavailable,
    LockHeld,
    ServerUnavailable,
    UnknownName,
    UsageError,
    WorkspaceNotFound,
)
from eventrunner.run.events import Event, EventBus, Failed, Queued, Succeeded

# Exit codes by error class, most specific first (walked along the class hierarchy).
EXIT_CODES: dict[type[BaseException], int] = {
    ConfigError: 2,
    UsageError: 2,
    WorkspaceNotFound: 2,
    UnknownName: 2,
    ExecutorUnavailable: 2,
    LockHeld: 3,
    ServerUnavailable: 3,
    EventRunnerError: 1,
}


def exit_code_for(exc: BaseException) -> int:
    """Map an error to an exit code by walking its class hierarchy."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def build_parser() -> argparse.ArgumentParser:
    """All commands and flags."""
    p = argparse.ArgumentParser(
        prog="eventrunner", description="Keep derived files fresh, per entity."
    )
    p.add_argument(
        "-w",
        "--workspace",
        type=Path,
        help="workspace folder (default: nearest with eventrunner.toml or pipelines/)",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str, reads: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if reads:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    sp = cmd("init", "scaffold a working workspace (pipeline, handler, sample data)")
    sp.add_argument("dir", nargs="?", type=Path, default=Path("."))
    cmd("validate", "check pipeline files and handlers; exit 2 when invalid", reads=True)
    sp = cmd("run", "bring everything (or the selection) up to date once", reads=True)
    sp.add_argument("--pipeline")
    sp.add_argument("--stage")
    sp.add_argument("--entity")
    sp.add_argument("--dry-run", action="store_true", help="show what would run")
    sp.add_argument("-j", "--jobs", type=int, default=None, help="handlers running at once")
    sp = cmd("status", "per-stage counts by state", reads=True)
    sp.add_argument("--pipeline")
    sp = cmd("entities", "list states with their reasons", reads=True)
    sp.add_argument("--pipeline")
    sp.add_argument("--stage")
    sp.add_argument("--state")
    sp.add_argument("--limit", type=int)
    sp = cmd("explain", "why each stage of an entity is or is not stale", reads=True)
    sp.add_argument("entity")
    sp.add_argument("--stage")
    sp.add_argument("--pipeline")
    sp = cmd("invalidate", "force re-runs", reads=True)
    sp.add_argument("stage")
    sp.add_argument("entities", nargs="*")
    sp.add_argument("--downstream", action="store_true")
    sp = cmd("retry", "clear backoff and dead states", reads=True)
    sp.add_argument("stage", nargs="?")
    sp.add_argument("entities", nargs="*")
    for name in ("hold", "release"):
        sp = cmd(name, f"{name} states (manual hold)", reads=True)
        sp.add_argument("stage")
        sp.add_argument("entities", nargs="*")
    sp = cmd("prune", "delete orphaned outputs and their manifests", reads=True)
    sp.add_argument("--dry-run", action="store_true")
    sp = cmd("graph", "the dependency graph across pipelines")
    sp.add_argument("--format", choices=("text", "mermaid", "dot"), default="text")
    sp = cmd("serve", "run the event-driven service (watch, webhooks, API)")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--no-watch", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "run" and _noop_fast_path(args):
            return 0
        return _command(args.command)(args)
    except ConfigError as exc:
        if getattr(args, "json", False):
            print(
                json.dumps(
                    {"valid": False, "problems": [p.__dict__ for p in exc.problems]}, indent=2
                )
            )
        else:
            print(f"eventrunner: {len(exc.problems)} problem(s) in the workspace:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        return 2
    except EventRunnerError as exc:
        print(f"eventrunner: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130


def _setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _workspace_path(args: argparse.Namespace) -> Path:
    from eventrunner.workspace.find import find_workspace

    return args.workspace.resolve() if args.workspace else find_workspace()


def _open(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    """(workspace, store, index) for a command."""
    from eventrunner.state.index import Index
    from eventrunner.state.store import Store
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(_workspace_path(args), overrides)
    store = Store(ws.settings.state_dir)
    return ws, store, Index.load(ws, store)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_validate(args: argparse.Namespace) -> int:
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(_workspace_path(args))
    if args.json:
        _print_json(
            {"valid": True, "stages": sorted(ws.graph.stages), "sources": sorted(ws.graph.sources)}
        )
    else:
        print(
            f"valid: {len(ws.graph.pipelines)} pipeline(s), {len(ws.graph.stages)} stage(s), {len(ws.graph.sources)} source pattern(s)"
        )
    return 0


def _is_full_run(args: argparse.Namespace) -> bool:
    return not (args.pipeline or args.stage or args.entity or args.dry_run)


def _noop_fast_path(args: argparse.Namespace) -> bool:
    """Answer a no-change `run` from stats alone (see fastpath.py); False to take the full path."""
    t0 = time.perf_counter()
    if not _is_full_run(args):
        return False
    from eventrunner.state import fastpath
    from eventrunner.workspace.find import STATE_DIR

    args.look = fastpath.look(_workspace_path(args) / STATE_DIR)
    if args.look is None or not args.look.unchanged:
        return False
    _print_run_report(
        args,
        {
            "executed": 0,
            "succeeded": 0,
            "failed": 0,
            "skipped": args.look.result["skipped"],
            "duration_s": round(time.perf_counter() - t0, 3),
            "failures": [],
            "mode": "stat",
        },
    )
    return True


def _print_run_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.json:
        _print_json(report)
        return
    print(
        f"executed {report['executed']}: {report['succeeded']} succeeded, {report['failed']} failed; "
        f"{report['skipped']} skipped (held, failed, dead or waiting) in {report['duration_s']}s"
    )
    for f in report["failures"][:20]:
        print(f"  FAILED {f['stage']} {f['entity']}: {f['error']}")


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from eventrunner.run.engine import Engine
    from eventrunner.run.management import resolve_stages
    from eventrunner.state import fastpath
    from eventrunner.state import stamp as stamping

    t0 = time.perf_counter()
    look = getattr(args, "look", None)
    since = look if look is not None and look.incremental and _is_full_run(args) else None
    from eventrunner.state.index import Index
    from eventrunner.state.store import Store
    from eventrunner.workspace.load import load_workspace

    if not args.dry_run and (report := _run_through_server(args)) is not None:
        _print_run_report(args, report)
        return 1 if report["failed"] else 0
    ws = load_workspace(_workspace_path(args))
    store = Store(ws.settings.state_dir)
    dirs_before = stamping.dir_snapshot(ws) if _is_full_run(args) else {}
    trusted = since.source_ids() if since is not None and not since.files_came_or_went else None
    index = Index.load(ws, store, trusted)
    if not args.dry_run:
        fastpath.discard(ws.settings.state_dir)
        store.acquire_lock("run")
    try:
        selected = set(resolve_stages(index, args.stage, args.pipeline))
        entity = args.entity
        jobs = args.jobs or ws.settings.runtime.concurrency
        progress = None if args.json or args.dry_run or not sys.stdout.isatty() else _Progress()
        engine = Engine(
            index,
            store,
            jobs=jobs,
            allow=lambda q, e: q in selected and entity in (None, e),
            events=EventBus(progress.on_event) if progress else None,
        )
        if entity is not None and not any(
            e == entity for q, e, _ in engine.planner.all_targets() if q in selected
        ):
            raise UnknownName(f"no selected stage has entity {entity!r}")
        if since is None and not args.dry_run and (store.crashed_before or index.recovered):
            index.sweep_temps()  # we hold the lock; a full run may follow a crash: clear its debris
        if since is not None:
            # Incremental: only what the changed stats affect, exactly as serve handles events.
            initial = stamping.targets_since(engine, index, ws, since)
        else:
            initial = [
                (q, e, v)
                for q, e, v in engine.planner.all_targets()
                if q in selected and entity in (None, e)
            ]
        engine.consider(initial, fresh_pass=True)
        blocked = {
            (q, e)
            for q, e, v in initial
            if engine.evaluator.verdict(q, e, v).state not in ("fresh", "stale")
        }
        if args.dry_run:
            return _report_dry_run(args, engine, blocked)
        if progress:
            progress.start(engine.queue_depth)
        try:
            outcome = asyncio.run(_drain(engine))
        finally:
            if progress:
                progress.stop()
        if outcome.executed or index.changed or not index.cache_path.exists():
            index.save()
    finally:
        store.release_lock()
    # Skipped: states that needed work, were not run, and still are not fresh (held, dead, ...).
    engine.evaluator.reset()
    skipped = sum(
        1
        for q, e, v in initial
        if (q, e) in blocked
        and (q, e) not in outcome.ran
        and index.has_entity(q, v)
        and engine.evaluator.verdict(q, e, v).state != "fresh"
    )
    global _ABANDONED
    _ABANDONED += engine.abandoned
    if since is not None and look is not None and not outcome.failed and not skipped:
        stamping.write_stamp(
            ws, index, skipped, carried=look.recorded, dirs_before=dirs_before, changed=look.changed
        )
    elif since is None and outcome.executed == 0 and _is_full_run(args):
        stamping.write_stamp(ws, index, skipped, dirs_before=dirs_before)
    report = {
        "executed": outcome.executed,
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "skipped": skipped,
        "duration_s": round(time.perf_counter() - t0, 3),
        "failures": outcome.failures,
        "mode": "incremental" if since is not None else "full",
    }
    _print_run_report(args, report)
    return 1 if outcome.failed else 0


async def _drain(engine: Any) -> Any:
    return await engine.drain()


def _report_dry_run(args: argparse.Namespace, engine: Any, blocked: set[tuple[str, str]]) -> int:
    would = sorted(engine._queued)
    if args.json:
        _print_json(
            {
                "would_run": [{"stage": q, "entity": e} for q, e in would],
                "executed": 0,
                "succeeded": 0,
                "failed": 0,
                "skipped": len(blocked),
                "duration_s": 0.0,
            }
        )
    else:
        print(f"would run {len(would)} state(s) now (downstream states run after them as needed):")
        for q, e in would[:200]:
            print(f"  {q} {e}")
    return 0


def _run_through_server(args: argparse.Namespace) -> dict[str, Any] | None:
    """While `serve` holds the workspace, `run` asks it to check the selection and waits until it
    is idle (the server's own concurrency applies, not -j); None when no server runs."""
    from eventrunner.cli.client import call_server, server_address
    from eventrunner.workspace.settings import load_settings

    settings = load_settings(_workspace_path(args))
    addr = server_address(settings.state_dir)
    if addr is None:
        return None
    body = {"pipeline": args.pipeline, "stage": args.stage, "entity": args.entity}
    report: dict[str, Any] = call_server(settings, addr, "run", body, timeout=None)
    return report


class _Progress:
    """A rich progress bar fed by engine events."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]running"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            transient=True,
        )
        self.task = self.progress.add_task("", total=0)

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def on_event(self, event: Event) -> None:
        if isinstance(event, Queued):
            self.progress.update(self.task, total=(self.progress.tasks[0].total or 0) + 1)
        elif isinstance(event, Succeeded | Failed):
            self.progress.update(self.task, advance=1, description=f"{event.stage} {event.entity}")


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of a command; the rest live in cli_commands (imported only when used)."""
    if name == "run":
        return cmd_run
    if name == "validate":
        return cmd_validate
    from eventrunner.cli.commands import COMMANDS_REST

    return COMMANDS_REST[name]


_ABANDONED = 0  # sync handlers left running after a timeout; their threads cannot be stopped


def console() -> None:
    """Console-script entry: like main(), but never waits for abandoned handler threads at exit."""
    code = main()
    if _ABANDONED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
