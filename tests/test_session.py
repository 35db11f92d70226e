"""The Session: one lifecycle (lock, look, load, sweep, catch-up ... save, stamp, unlock) for
`run`, `serve` and the CLI's management calls, on real workspaces in temp folders."""

from __future__ import annotations

import asyncio
import json
import marshal
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import (
    ECHO_HANDLERS,
    ECHO_PIPELINE,
    LOGGED_ECHO_HANDLERS,
    MakeWorkspace,
    Workspace,
    age,
)

from eventrunner.core.errors import LockHeld, UnknownName
from eventrunner.run.session import Session
from eventrunner.service.runtime import Runtime
from eventrunner.state import fastpath, packed
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

SLOW_HANDLERS = """\
import asyncio
from pathlib import Path

GO = Path(__file__).resolve().parent.parent / "go"


async def shout(ctx, text: str) -> str:
    while not GO.exists():  # held until the test says go (or the run is cancelled)
        await asyncio.sleep(0.01)
    return text.upper()
"""


def echo_files(handlers: str = ECHO_HANDLERS) -> dict[str, str]:
    return {
        "pipelines/echo.toml": ECHO_PIPELINE,
        "handlers/echo.py": handlers,
        "inbox/a.txt": "hello world\n",
        "inbox/b.txt": "one two three\n",
    }


def lock_is_free(ws: Workspace) -> bool:
    store = Store(ws.root / ".eventrunner")
    try:
        store.acquire_lock("test")
    except LockHeld:
        return False
    store.release_lock()
    return True


async def until(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- start and stop failures, reported apart ------------------------------------------------------
async def test_a_failed_start_is_reported_as_a_start_failure_and_releases_the_lock(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace, and a run selecting an entity no stage has
    ws = make_workspace(echo_files())
    session = Session(load_workspace(ws.root), "run", entity="nosuch")

    # When the session starts
    with pytest.raises(UnknownName, match="nosuch"):
        await session.start()

    # Then the failure is the start's (nothing failed while stopping), the lock is released,
    # nothing was saved, and closing afterwards does nothing
    assert isinstance(session.start_error, UnknownName)
    assert session.stop_errors == []
    assert lock_is_free(ws)
    assert not (ws.root / ".eventrunner" / "index.sqlite").exists()
    await session.close()
    assert session.stop_errors == []


async def test_a_start_refused_by_the_lock_names_the_holder_and_takes_nothing(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(echo_files())
    holder = Store(ws.root / ".eventrunner")
    holder.acquire_lock("serve")
    try:
        session = Session(load_workspace(ws.root), "run")
        with pytest.raises(LockHeld, match="serve"):
            await session.start()
        assert isinstance(session.start_error, LockHeld)
        assert session.index is None and session.engine is None
    finally:
        holder.release_lock()


async def test_a_failed_save_is_reported_as_a_stop_failure_and_the_lock_is_still_released(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a session that ran work, and an index cache that cannot be written (a folder in
    # its place)
    ws = make_workspace(echo_files())
    (ws.root / ".eventrunner" / "index.sqlite").mkdir(parents=True)
    session = Session(load_workspace(ws.root), "run")
    await session.start()
    assert session.engine is not None
    await session.engine.wait_idle()
    session.vouch()

    # When it closes
    with pytest.raises(OSError):
        await session.close()

    # Then the save is the failed step, the stamp (which depends on it) was not written, the
    # index stays marked dirty (the next load rebuilds from manifests), and the lock is free
    assert session.start_error is None
    assert [name for name, _ in session.stop_errors] == ["index save"]
    assert not (ws.root / ".eventrunner" / fastpath.STAMP).exists()
    assert (ws.root / ".eventrunner" / "index.dirty").exists()
    assert lock_is_free(ws)
    # And closing again is safe and reports nothing new
    await session.close()
    assert len(session.stop_errors) == 1


async def test_closing_twice_is_safe_and_saves_once(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(echo_files())
    async with Session(load_workspace(ws.root), "run") as session:
        assert session.engine is not None
        await session.engine.wait_idle()
    cache = ws.root / ".eventrunner" / "index.sqlite"
    saved = cache.stat().st_mtime_ns
    await session.close()
    await session.close()
    assert cache.stat().st_mtime_ns == saved
    assert session.stop_errors == [] and lock_is_free(ws)
    assert ws.read("summary.md") == "a=2\nb=3\n"


async def test_cancelling_a_stop_cancels_running_handlers_releases_the_lock_and_reraises(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a session whose one handler is still running (it waits for a file that never comes)
    files = echo_files(SLOW_HANDLERS)
    files["pipelines/echo.toml"] = (
        'name = "echo"\n\n[stages.shout]\nhandler = "echo:shout"\n'
        'inputs = { text = "inbox/{name}.txt" }\noutput = "shouted/{name}.txt"\n'
    )
    del files["inbox/b.txt"]
    ws = make_workspace(files)
    session = Session(load_workspace(ws.root), "run")
    await session.start()
    assert session.index is not None
    await until(lambda: session.index is not None and session.index.running, "the handler")

    # When the close, waiting for that handler, is cancelled
    closing = asyncio.ensure_future(session.close())
    await asyncio.sleep(0)  # one turn: the close runs until it waits for the handler
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing

    # Then the cancellation went on after the lock was released, the handler was cancelled
    # (nothing committed), and nothing was saved or stamped
    assert [name for name, _ in session.stop_errors] == ["engine stop"]
    assert lock_is_free(ws)
    assert not session.index.running
    assert not ws.exists("shouted/a.txt")
    assert not (ws.root / ".eventrunner" / fastpath.STAMP).exists()


async def test_a_read_only_session_takes_no_lock_and_writes_nothing(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(echo_files())
    holder = Store(ws.root / ".eventrunner")
    holder.acquire_lock("serve")
    try:
        async with Session(load_workspace(ws.root), "run", read_only=True) as session:
            assert session.engine is not None
            assert session.engine.queued() == [("echo.shout", "a"), ("echo.shout", "b")]
    finally:
        holder.release_lock()
    assert sorted(p.name for p in (ws.root / ".eventrunner").iterdir()) == ["lock"]
    assert not ws.exists("shouted")


# -- run and serve: one sequence, one result ------------------------------------------------------
def stamp_of(ws: Workspace) -> dict[str, Any]:
    """What a stamp vouches for, with paths relative to the workspace (stats differ by copy)."""
    with open(ws.root / ".eventrunner" / fastpath.STAMP, "rb") as fh:
        stamp = marshal.load(fh)
    root = str(ws.root)

    def rel(paths: tuple[str, bytes]) -> set[str]:
        stats = packed.recorded_stats(paths, stamp.get("root", ""))
        return {p.removeprefix(root) for p in stats}

    result = dict(stamp["result"])
    result["outdirs"] = {p.removeprefix(root) for p in result.get("outdirs", {})}
    return {
        "defs": rel(stamp["defs"]),
        "paths": rel(stamp["paths"]),
        "sources": stamp["sources"],
        "source_ids": stamp["source_ids"],
        "result": result,
    }


def state_of(ws: Workspace) -> dict[str, Any]:
    """Outputs and manifests (without their timings) of a workspace."""
    state = ws.root / ".eventrunner" / "state"
    manifests = {}
    for path in sorted(state.rglob("*.json")):
        m = json.loads(path.read_text())
        for timing in ("started", "finished_ns", "duration_s"):
            m.pop(timing, None)
        manifests[str(path.relative_to(state))] = m
    outputs = {
        str(p.relative_to(ws.root)): p.read_text()
        for folder in ("shouted", "counts")
        for p in sorted((ws.root / folder).iterdir())
    }
    outputs["summary.md"] = ws.read("summary.md")
    return {"manifests": manifests, "outputs": outputs}


async def serve_once(ws: Workspace) -> Runtime:
    """Start serve's runtime (no watcher), wait until it is idle, stop it."""
    async with Runtime(load_workspace(ws.root), watch=False) as rt:
        await rt.start()
        assert rt.engine is not None
        await rt.engine.wait_idle()
    return rt


def test_run_and_serve_leave_identical_state_and_stamps(make_workspace: MakeWorkspace) -> None:
    # Given two copies of one workspace
    ran, served = make_workspace(echo_files()), make_workspace(echo_files())
    for ws in (ran, served):
        age(ws)

    # When one is brought up to date by `run` (then a no-change run, which stamps) and the
    # other by one serve session
    assert ran.run()["executed"] == 5
    age(ran)
    assert ran.run()["executed"] == 0
    assert asyncio.run(serve_once(served)).start_mode == "full"

    # Then both hold the same outputs and manifests and vouch for the same files
    assert state_of(ran) == state_of(served)
    assert stamp_of(ran) == stamp_of(served)
    # And both answer the next run from stats alone
    assert ran.run()["mode"] == served.run()["mode"] == "stat"

    # When the same input changes in both while nothing runs, and each catches up its own way
    for ws in (ran, served):
        ws.write("inbox/a.txt", "hello again world\n")
        age(ws)
    report = ran.run()
    rt = asyncio.run(serve_once(served))

    # Then both followed only the change (incrementally) to the same state and stamp
    assert report["mode"] == rt.start_mode == "incremental"
    assert report["executed"] == 3
    assert state_of(ran) == state_of(served)
    assert stamp_of(ran) == stamp_of(served)
    assert ran.run()["mode"] == served.run()["mode"] == "stat"


def test_a_management_call_from_the_cli_holds_the_workspace_like_any_session(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace with a stamp
    ws = make_workspace(echo_files(LOGGED_ECHO_HANDLERS))
    ws.run()
    age(ws)
    ws.run()
    ws.runs()

    # When a state is held from the CLI (no server runs)
    assert ws.cli("hold", "shout", "a").code == 0

    # Then the change is saved and unlocked (the stamp no longer vouches), and a run after an
    # edit of its input skips it and the two states waiting on it
    assert lock_is_free(ws)
    assert not (ws.root / ".eventrunner" / "index.dirty").exists()
    ws.write("inbox/a.txt", "changed\n")
    age(ws)
    report = ws.run()
    assert report["mode"] == "full" and report["skipped"] == 3
    assert ws.runs() == []


def test_a_no_change_run_imports_neither_the_session_nor_serve_dependencies(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(echo_files())
    ws.run()
    age(ws)
    ws.run()
    probe = (
        "import sys\n"
        "from eventrunner.cli.main import main\n"
        "code = main(['-w', sys.argv[1], 'run', '--json'])\n"
        "heavy = ['asyncio', 'aiohttp', 'apscheduler', 'pydantic', 'watchfiles', 'rich',\n"
        "         'eventrunner.run.session', 'eventrunner.run.engine']\n"
        "print(code, [m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(ws.root)], capture_output=True, text=True, timeout=60
    )
    assert json.loads(proc.stdout)["mode"] == "stat", proc.stderr
    assert proc.stderr.strip() == "0 []"
