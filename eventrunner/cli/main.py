"""The `eventrunner` command line. Imports stay lazy: a no-change `run` is a whole process."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from eventrunner.cli.common import print_json, print_report, workspace_path
from eventrunner.cli.parser import build_parser
from eventrunner.core.errors import (
    ConfigError,
    EventRunnerError,
    exit_code_for,
    is_environmental,
)

if TYPE_CHECKING:
    from logging import LogRecord
    from pathlib import Path

    from eventrunner.state.fastpath import Look


def main(argv: Sequence[str] | None = None, reexec: bool = False) -> int:
    """Entry point of the console script (`reexec`: this process is the command's own, which
    `serve` may re-execute on another allocator)."""
    args = build_parser().parse_args(argv)
    if reexec and args.command == "serve":
        _serve_allocator()
    try:
        if args.command == "run" and (code := _noop_fast_path(args)) is not None:
            return code  # it logs nothing: logging (~9 ms to import) is set up only past it
        _setup_logging(args.verbose, args.command)
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
    except OSError as exc:
        if not is_environmental(exc):
            raise  # a bug: its traceback is wanted
        # A full disk, a read-only or failing filesystem: nothing half-done is trusted later
        # (see the guarantees), so the fix is the machine's and the command can be run again.
        print(f"eventrunner: {exc.strerror or exc}{_named(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _named(exc: OSError) -> str:
    """ ": <path>" for an OSError that names its file, else ""."""
    return f": {exc.filename}" if exc.filename else ""


def _setup_logging(verbose: int, command: str) -> None:
    import logging

    from eventrunner.cli.logs import setup_logging

    root = logging.getLogger()
    before = list(root.handlers)
    setup_logging(verbose)
    if command == "run" and verbose == 0:
        # Each failure is printed once, in run's summary; -v logs them as they happen too.
        # Only on the handler made here: whoever configured logging before keeps every record.
        for handler in root.handlers:
            if handler not in before:
                handler.addFilter(_not_failure_lines)


def _not_failure_lines(record: LogRecord) -> bool:
    """False for the engine's one warning line per failed state."""
    return not (record.name == "eventrunner.engine" and record.levelno == 30)  # WARNING


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when valid (with warnings about what would silently do nothing), 2 otherwise."""
    from eventrunner.cli.common import print_warnings
    from eventrunner.run import noops
    from eventrunner.state.index import Index
    from eventrunner.state.store import Store
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(workspace_path(args), import_handlers=True)
    index = Index.load(ws, Store(ws.settings.state_dir))  # reads only: no lock taken
    warnings = noops.source_warnings(index) + list(noops.stray_outputs(index).values())
    if args.json:
        print_json(
            {
                "valid": True,
                "stages": sorted(ws.graph.stages),
                "sources": sorted(ws.graph.sources),
                "warnings": warnings,
            }
        )
        return 0
    print_warnings(warnings)
    print(
        f"valid: {len(ws.graph.pipelines)} pipeline(s), {len(ws.graph.stages)} stage(s), "
        f"{len(ws.graph.sources)} source pattern(s)"
        + (f", {len(warnings)} warning(s)" if warnings else "")
    )
    return 0


def _noop_fast_path(args: argparse.Namespace) -> int | None:
    """Answer a no-change `run` from stats alone (see fastpath.py): the exit code, or None to
    take the full path."""
    t0 = time.perf_counter()
    if args.pipeline or args.stage or args.entity or args.dry_run:
        return None
    from eventrunner.workspace.find import STATE_DIR

    args.look = _look(workspace_path(args) / STATE_DIR)  # the full path follows it
    if args.look is None or not args.look.unchanged:
        return None
    from eventrunner.run.report import RunReport

    recorded = args.look.result  # what the run that wrote the stamp found
    if not _unchanged(recorded.get("outdirs", {})):
        return None  # a file came into an output folder: the full path looks (run/noops.py)
    report = RunReport(
        skipped=recorded["skipped"],
        duration_s=round(time.perf_counter() - t0, 3),
        mode="stat",
        not_fresh=list(recorded.get("not_fresh", [])),
        warnings=[*recorded.get("warnings", []), *recorded.get("strays", {}).values()],
    )
    print_report(args, report)
    return report.exit_code()


# What a run that finds changes imports, in import order: taken while a look's workers stat.
_RUN_PATH = (
    "asyncio",
    "eventrunner.run.events",
    "eventrunner.state.index",
    "eventrunner.run.evaluate",
    "eventrunner.run.engine",
    "eventrunner.run.session",
    "eventrunner.cli.run",
)


def _look(state_dir: Path) -> Look | None:
    """The stamp's look (fastpath.Look, None: no usable stamp). A large stamp's stats are taken
    by worker processes (lookahead.py); once one finds a change, this one imports what a run
    needs, a module at a time until they are done. Until then it waits idle: a no-change
    answer leaves the cores to the workers and waits for no import."""
    import importlib

    from eventrunner.core.errors import StorageError
    from eventrunner.state import fastpath
    from eventrunner.state.lookahead import PendingLook

    pending = PendingLook(state_dir)
    try:
        if pending.maybe_changed():
            for name in _RUN_PATH:
                if pending.done():
                    break
                importlib.import_module(name)
        return pending.result()
    except StorageError:  # a worker failed (its reason is serve's start-up error): look here
        return fastpath.look(state_dir)
    finally:
        pending.cancel()


def _unchanged(stats: dict[str, tuple[int, int, int] | None]) -> bool:
    """True when every folder has the stats recorded for it (None: it was not there)."""
    for path, recorded in stats.items():
        try:
            st = os.stat(path)
        except OSError:
            if recorded is not None:
                return False
            continue
        if recorded != (st.st_size, st.st_mtime_ns, st.st_ino):
            return False
    return True


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of a command, imported only when used (run.py, or commands.py for the rest)."""
    if name == "validate":
        return cmd_validate
    if name == "run":
        from eventrunner.cli.run import cmd_run

        return cmd_run
    if name == "logs":
        from eventrunner.cli.outputs import cmd_logs

        return cmd_logs
    if name == "completion":
        from eventrunner.cli.completion import cmd_completion

        return cmd_completion
    from eventrunner.cli.commands import COMMANDS_REST

    return COMMANDS_REST[name]


_ABANDONED = 0  # sync handlers left running after a timeout; their threads cannot be stopped


# The -X option a serve re-executed on glibc's allocator carries (see _serve_allocator).
_MALLOC_MARK = "eventrunner_malloc"


def _serve_allocator() -> None:
    """`serve` runs on glibc's allocator (PYTHONMALLOC=malloc), whose free pages malloc_trim
    hands back: after a pass over every state at 100,000 entities, Python's own allocator kept
    ~100 MB of 1 MiB arenas that a few live objects pinned (213-249 MB resident, 124-133 MB on
    glibc's; no slower there). Re-executes once, same PID, unless PYTHONMALLOC is set (the
    user's choice), and on one glibc arena (heap.one_arena). Handlers and worker processes get
    the default allocator back."""
    if sys.platform != "linux":
        return
    if _MALLOC_MARK in sys._xoptions:
        os.environ.pop("PYTHONMALLOC", None)  # for what this process starts
        from eventrunner.state import heap

        heap.one_arena()  # before any thread: see heap.one_arena
        return
    if "PYTHONMALLOC" in os.environ or not sys.orig_argv:
        return
    argv = [sys.orig_argv[0], "-X", _MALLOC_MARK, *sys.orig_argv[1:]]
    os.execve(sys.executable, argv, {**os.environ, "PYTHONMALLOC": "malloc"})


def console() -> None:
    """Console-script entry: like main(), but never waits for abandoned handler threads at exit,
    and quiet when the reader of its output goes away (`eventrunner entities | head`)."""
    try:
        code = main(reexec=True)
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
