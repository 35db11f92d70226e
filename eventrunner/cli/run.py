"""`eventrunner run`: bring everything (or a selection) up to date once, in one Session.

A no-change run never gets here: main.py answers it from stats first (state/fastpath.py).
While `serve` holds the workspace, the run is the server's (management.run_selection).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

from eventrunner.cli.common import print_json, print_report, workspace_path
from eventrunner.run import noops
from eventrunner.run.engine import Engine
from eventrunner.run.events import Event, Failed, Queued, Succeeded
from eventrunner.run.gate import STAMP_MAX, Gate
from eventrunner.run.queries import resolve_stages
from eventrunner.run.report import RunReport
from eventrunner.run.session import Session
from eventrunner.workspace.load import load_workspace


def cmd_run(args: argparse.Namespace) -> int:
    """Exit 0 when nothing failed and every selected state is fresh afterwards (held ones
    excepted), 1 otherwise, 130 when interrupted (Ctrl-C)."""
    t0 = time.perf_counter()
    if not args.dry_run and (served := _run_through_server(args)) is not None:
        print_report(args, served)
        return served.exit_code()
    ws = load_workspace(workspace_path(args), cached=not args.dry_run)  # a dry run writes nothing
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
    look = getattr(args, "look", None)
    report, left = asyncio.run(_run(session, progress, look.result if look else {}))
    if session.engine is not None:
        args.abandoned = session.engine.abandoned  # main() exits without joining their threads
    if report.would_run is not None:
        return _print_dry_run(args, report)
    report.duration_s = round(time.perf_counter() - t0, 3)
    report.warnings += session.stop_warnings  # a cache the disk refused (the states are kept)
    if left is not None:
        args.abandoned = getattr(args, "abandoned", 0) + left["running"]
        return _print_interrupted(args, report, left)
    print_report(args, report)
    return report.exit_code()


async def _run(
    session: Session, progress: _Progress | None, stamped: dict[str, Any]
) -> tuple[RunReport, dict[str, int] | None]:
    """Inside the session: the catch-up has queued what is stale; drain it (or stop at Ctrl-C,
    returning what was left), find what is not fresh and what would silently do nothing, and
    decide the stamp (`stamped`: what the last one recorded)."""
    async with session:
        engine = session.engine
        assert engine is not None
        # Blocked: what the catch-up found neither fresh nor stale (held, failed, dead, waiting).
        blocked = {
            (q, e): v
            for q, e, v in session.initial
            if (verdict := engine.verdict(q, e, v)).state != "fresh" and not verdict.runnable
        }
        if session.read_only:
            would = [{"stage": q, "entity": e} for q, e in engine.queued()]
            return RunReport(skipped=len(blocked), mode="dry-run", would_run=would), None
        undone = await _drain(engine, progress)
        report = engine.outcome
        report.mode = session.mode
        gate = _not_fresh(session, blocked, [p for pairs in (undone or {}).values() for p in pairs])
        report.not_fresh = gate.entries()
        # Left undone at Ctrl-C: what was queued, and what was running and did not commit.
        left = (
            {k: sum(1 for p in v if p in gate.found) for k, v in undone.items()} if undone else None
        )
        # Skipped: states that needed work, were not run, and still are not fresh (held, dead...)
        report.skipped = sum(1 for k in blocked if k not in report.ran and k in gate.found)
        strays = _strays(session, stamped)
        assert session.index is not None
        report.warnings = noops.source_warnings(session.index) + list(strays.values())
        if left is None:
            _vouch(session, report, strays)
        return report, left


def _strays(session: Session, stamped: dict[str, Any]) -> dict[str, str]:
    """Files dropped where a stage writes: every output folder looked at after a full
    evaluation; after an incremental one only those whose stats moved since the stamp (the
    others' findings are the stamp's)."""
    index = session.index
    assert index is not None
    if session.mode != "incremental":
        return noops.stray_outputs(index)
    graph, root = index.ws.graph, str(index.root)
    moved = noops.changed_output_dirs(graph, root, stamped.get("outdirs", {}))
    kept = {q: w for q, w in stamped.get("strays", {}).items() if q in graph.stages}
    look = session.follows
    if look is None:
        return {q: w for q, w in kept.items() if q not in moved} | noops.stray_outputs(index, moved)
    # A folder that held no stray at the stamp: only files new since can be strays (our own
    # writes move the folder too, and a full check reads every manifest of the stage).
    again = [q for q in moved if q in kept]
    out = {q: w for q, w in kept.items() if q not in moved} | noops.stray_outputs(index, again)
    unsure = [q for q in moved if q not in kept and not noops.nothing_new(index, q, look)]
    vouched = look.stamped() if unsure else set()
    for q in unsure:
        if found := noops.new_strays(index, q, vouched, look.root):
            out[q] = noops.stray_message(graph, q, noops.output_pattern(index, q), found)
    return {q: out[q] for q in graph.order if q in out}


def _vouch(session: Session, report: RunReport, strays: dict[str, str]) -> None:
    """A stamp when the run accounted for everything, with what the no-change run reports."""
    settled = not (report.failed or report.skipped or report.not_fresh)
    if settled and (session.mode == "incremental" or (session.mode == "full" and session.whole)):
        # Everything is fresh now (the states that ran too): the next run follows only changes.
        session.vouch(report.skipped, strays=strays)
    elif (
        session.mode == "full"
        and session.whole
        and report.executed == 0
        and len(report.not_fresh) <= STAMP_MAX
    ):
        # A stamp that reports the blocked states as skipped, and which ones are not fresh.
        session.vouch(report.skipped, not_fresh=report.not_fresh, strays=strays)


def _not_fresh(
    session: Session,
    blocked: dict[tuple[str, str], dict[str, str]],
    undone: list[tuple[str, str]],
) -> Gate:
    """Which selected states are not fresh after the run: those the catch-up found blocked,
    those that ran (or were left `undone` at Ctrl-C), and everything below the ones still not
    fresh (O(what is not fresh))."""
    index, engine = session.index, session.engine
    assert index is not None and engine is not None
    # The engine's evaluator with its memo dropped (the run changed state since the catch-up):
    # an aggregate that ran is checked from its cert, not by a second walk of every member.
    engine.forget_verdicts()
    gate = Gate(index, engine.evaluator, incremental=True)
    ran = [
        (q, e, v)
        for q, e in sorted({*engine.outcome.ran, *undone})
        if (v := index.values_or_none(q, e)) is not None
    ]
    gate.check([*((q, e, v) for (q, e), v in blocked.items()), *ran])
    stages, entity = session.stages, session.entity
    gate.follow(lambda q, e: (stages is None or q in stages) and entity in (None, e))
    return gate


async def _drain(
    engine: Engine, progress: _Progress | None
) -> dict[str, list[tuple[str, str]]] | None:
    """Wait until the engine is idle; at Ctrl-C stop it at once (running handlers are
    cancelled, their states stay stale) and return what was queued and running then."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    if progress:
        progress.start(engine.queue_depth)
    idle = asyncio.ensure_future(engine.wait_idle())
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
        if idle.done():
            return None
        undone = {"queued": engine.queued(), "running": sorted(engine.index.running)}
        await engine.stop(0)
        return undone
    finally:
        for task in (idle, stop):
            task.cancel()
        if progress:
            progress.stop()
        loop.remove_signal_handler(signal.SIGINT)


def _print_interrupted(args: argparse.Namespace, report: RunReport, left: dict[str, int]) -> int:
    """What was done before Ctrl-C and what is left; exit 130 (128 + SIGINT), as shells do."""
    undone = left["queued"] + left["running"]
    if args.json:
        print_json({**report.to_json(), "interrupted": True, "left": left})
        return 130
    print("\n".join(report.lines()))
    print(
        f"interrupted: {report.succeeded} state(s) done, {undone} left undone "
        f"({left['queued']} queued, {left['running']} stopped while running); "
        "`eventrunner run` goes on from here"
    )
    return 130


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
    from eventrunner.workspace.find import STATE_DIR
    from eventrunner.workspace.settings import load_settings

    where = workspace_path(args)
    addr = server_address(where / STATE_DIR)  # the settings are read only for a server
    if addr is None:
        return None
    settings = load_settings(where)
    body = {"pipeline": args.pipeline, "stage": args.stage, "entity": args.entity}
    try:
        return RunReport.from_json(call_server(settings, addr, "run", body, timeout=None))
    except KeyboardInterrupt:
        # The work is the server's: it goes on; only our wait for it ends.
        print(
            f"interrupted: the server at {addr} goes on with what it has queued "
            "(`eventrunner status` shows how far it is)",
            file=sys.stderr,
        )
        raise


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
