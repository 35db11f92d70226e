"""`eventrunner run`: bring everything (or a selection) up to date once, in one Session.

A no-change run never gets here: main.py answers it from stats first (state/fastpath.py).
While `serve` holds the workspace, the run is the server's (management.run_selection).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from eventrunner.cli.common import print_json, print_report, workspace_path
from eventrunner.run.events import Event, Failed, Queued, Succeeded
from eventrunner.run.queries import resolve_stages
from eventrunner.run.report import RunReport
from eventrunner.run.session import Session
from eventrunner.workspace.load import load_workspace


def cmd_run(args: argparse.Namespace) -> int:
    """Exit 0 when nothing failed, 1 otherwise."""
    t0 = time.perf_counter()
    if not args.dry_run and (served := _run_through_server(args)) is not None:
        print_report(args, served)
        return 1 if served.failed else 0
    ws = load_workspace(workspace_path(args))
    selected = None
    if args.stage or args.pipeline:
        selected = resolve_stages(ws.graph, args.stage, args.pipeline)
    progress = None if args.json or args.dry_run or not sys.stdout.isatty() else _Progress()
    session = Session(
        ws,
        "run",
        read_only=args.dry_run,
        stages=selected,
        entity=args.entity,
        jobs=args.jobs,
        listener=progress.on_event if progress else None,
        look=getattr(args, "look", None),  # taken by main's fast path for a whole run
    )
    report = asyncio.run(_run(session, progress))
    if session.engine is not None:
        args.abandoned = session.engine.abandoned  # main() exits without joining their threads
    if report.would_run is not None:
        return _print_dry_run(args, report)
    report.duration_s = round(time.perf_counter() - t0, 3)
    print_report(args, report)
    return 1 if report.failed else 0


async def _run(session: Session, progress: _Progress | None) -> RunReport:
    """Inside the session: the catch-up has queued what is stale; drain it and decide the stamp."""
    async with session:
        engine = session.engine
        assert engine is not None
        # Blocked: what the catch-up found neither fresh nor stale (held, failed, dead, waiting).
        blocked = {
            (q, e)
            for q, e, v in session.initial
            if engine.verdict(q, e, v).state not in ("fresh", "stale")
        }
        if session.read_only:
            would = [{"stage": q, "entity": e} for q, e in engine.queued()]
            return RunReport(skipped=len(blocked), mode="dry-run", would_run=would)
        if progress:
            progress.start(engine.queue_depth)
        try:
            await engine.wait_idle()
        finally:
            if progress:
                progress.stop()
        report = engine.outcome
        report.mode = session.mode
        report.skipped = _skipped(session, blocked)
        if session.mode == "incremental" and not report.failed and not report.skipped:
            session.vouch(report.skipped)
        elif session.mode == "full" and session.whole and report.executed == 0:
            session.vouch(report.skipped)  # a stamp that reports the blocked states as skipped
        return report


def _skipped(session: Session, blocked: set[tuple[str, str]]) -> int:
    """States that needed work, were not run, and still are not fresh (held, dead, ...)."""
    engine, index = session.engine, session.index
    assert engine is not None and index is not None
    engine.forget_verdicts()
    ran = engine.outcome.ran
    return sum(
        1
        for q, e, v in session.initial
        if (q, e) in blocked
        and (q, e) not in ran
        and index.has_entity(q, v)
        and engine.verdict(q, e, v).state != "fresh"
    )


def _print_dry_run(args: argparse.Namespace, report: RunReport) -> int:
    would = report.would_run or []
    if args.json:
        print_json(report.to_json())
    else:
        print(f"would run {len(would)} state(s) now (downstream states run after them as needed):")
        for w in would[:200]:
            print(f"  {w['stage']} {w['entity']}")
    return 0


def _run_through_server(args: argparse.Namespace) -> RunReport | None:
    """While `serve` holds the workspace, `run` asks it to check the selection and waits until it
    is idle (the server's own concurrency applies, not -j); None when no server runs."""
    from eventrunner.cli.client import call_server, server_address
    from eventrunner.workspace.settings import load_settings

    settings = load_settings(workspace_path(args))
    addr = server_address(settings.state_dir)
    if addr is None:
        return None
    body = {"pipeline": args.pipeline, "stage": args.stage, "entity": args.entity}
    return RunReport.from_json(call_server(settings, addr, "run", body, timeout=None))


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
