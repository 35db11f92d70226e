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

from eventrunner.cli.common import print_json, print_report, workspace_path
from eventrunner.core.errors import ConfigError, EventRunnerError, exit_code_for


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
        return _subcommand(sub, name, help_, reads)

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


def _subcommand(sub: Any, name: str, help_: str, reads: bool) -> argparse.ArgumentParser:
    """One command's parser (`sub` is what add_subparsers returned); --json for reading ones."""
    sp: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    if reads:
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    return sp


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run" and _noop_fast_path(args):
            return 0  # it logs nothing: logging (~9 ms to import) is set up only past it
        _setup_logging(args.verbose)
        code = _command(args.command)(args)
        global _ABANDONED
        _ABANDONED += getattr(args, "abandoned", 0)
        return code
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
    from eventrunner.cli.logs import setup_logging

    setup_logging(verbose)


def cmd_validate(args: argparse.Namespace) -> int:
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(workspace_path(args), import_handlers=True)
    if args.json:
        print_json(
            {"valid": True, "stages": sorted(ws.graph.stages), "sources": sorted(ws.graph.sources)}
        )
    else:
        print(
            f"valid: {len(ws.graph.pipelines)} pipeline(s), {len(ws.graph.stages)} stage(s), {len(ws.graph.sources)} source pattern(s)"
        )
    return 0


def _noop_fast_path(args: argparse.Namespace) -> bool:
    """Answer a no-change `run` from stats alone (see fastpath.py); False to take the full path."""
    t0 = time.perf_counter()
    if args.pipeline or args.stage or args.entity or args.dry_run:
        return False
    from eventrunner.state import fastpath
    from eventrunner.workspace.find import STATE_DIR

    args.look = fastpath.look(workspace_path(args) / STATE_DIR)  # the full path follows it
    if args.look is None or not args.look.unchanged:
        return False
    from eventrunner.run.report import RunReport

    skipped = args.look.result["skipped"]
    print_report(
        args, RunReport(skipped=skipped, duration_s=round(time.perf_counter() - t0, 3), mode="stat")
    )
    return True


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of a command, imported only when used (run.py, or commands.py for the rest)."""
    if name == "validate":
        return cmd_validate
    if name == "run":
        from eventrunner.cli.run import cmd_run

        return cmd_run
    from eventrunner.cli.commands import COMMANDS_REST

    return COMMANDS_REST[name]


_ABANDONED = 0  # sync handlers left running after a timeout; their threads cannot be stopped


def console() -> None:
    """Console-script entry: like main(), but never waits for abandoned handler threads at exit,
    and quiet when the reader of its output goes away (`eventrunner entities | head`)."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader took what it wanted. Point stdout at /dev/null so the interpreter's own
        # flush at exit does not raise again, and exit as a successful command would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    if _ABANDONED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
