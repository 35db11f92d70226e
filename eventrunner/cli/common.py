"""What every CLI command shares: the workspace path, JSON output, the run report's printing,
and holding the workspace for a state change. Light on purpose: the no-change `run` imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from eventrunner.run.report import RunReport
    from eventrunner.run.session import Session
    from eventrunner.state.index import Index
    from eventrunner.workspace.load import Workspace

T = TypeVar("T")


def workspace_path(args: argparse.Namespace) -> Path:
    """-w, or the nearest folder upward holding eventrunner.toml or pipelines/."""
    from eventrunner.workspace.find import find_workspace

    return args.workspace.resolve() if args.workspace else find_workspace()


def print_json(value: Any) -> None:
    """The one --json format: indented, keys sorted."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_report(args: argparse.Namespace, report: RunReport) -> None:
    """A run's report as JSON (--json) or its summary lines; warnings go to stderr."""
    print_warnings(report.warnings)
    if args.json:
        print_json(report.to_json())
    else:
        print("\n".join(report.lines()))


def print_warnings(warnings: list[str]) -> None:
    """Silent no-ops worth knowing about (run/noops.py), one line each on stderr."""
    for w in warnings:
        print(f"eventrunner: warning: {w}", file=sys.stderr)


def read_index(args: argparse.Namespace) -> tuple[Workspace, Index]:
    """The workspace and its index, for a command that only reads (no lock taken)."""
    from eventrunner.state.index import Index
    from eventrunner.state.store import Store
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(workspace_path(args))
    return ws, Index.load(ws, Store(ws.settings.state_dir))


def hold_workspace(
    args: argparse.Namespace, purpose: str, fn: Callable[[Session], T], *, read_only: bool = False
) -> T:
    """Call `fn` on a session holding the workspace (lock, index; saved and unlocked after);
    read_only takes no lock and writes nothing."""
    import asyncio

    from eventrunner.run.session import Session
    from eventrunner.workspace.load import load_workspace

    ws = load_workspace(workspace_path(args))

    async def held() -> T:
        async with Session(ws, purpose, check=False, read_only=read_only) as session:
            return fn(session)

    return asyncio.run(held())
