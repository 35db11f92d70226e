"""serve and the stamp: start from what changed while down; vouch at a clean stop only when provable."""

from __future__ import annotations

import asyncio
import os
import time

from conftest import ECHO_PIPELINE, LOGGED_ECHO_HANDLERS, MakeWorkspace, Workspace, age

from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace


def settled(make_workspace: MakeWorkspace) -> Workspace:
    ws = make_workspace(
        {
            "eventrunner.toml": '[runtime]\ndebounce = "20ms"\nsettle = "20ms"\nshutdown_grace = "5s"\n',
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": LOGGED_ECHO_HANDLERS,
            "inbox/hello.txt": "hello world\n",
            "inbox/other.txt": "one two three\n",
        }
    )
    ws.run()
    age(ws)
    assert ws.run()["executed"] == 0  # a full no-change run writes the stamp
    ws.runs()
    return ws


async def serve_until_idle(ws: Workspace, *, watch: bool = False) -> Runtime:
    """Start a runtime, wait (with a deadline) until it has nothing queued or running, stop it."""
    async with Runtime(load_workspace(ws.root), watch=watch) as rt:
        await rt.start()
        deadline = time.monotonic() + 20
        while not (
            rt.engine is not None
            and rt.engine._is_idle()
            and rt.index is not None
            and not rt.index.running
        ):
            assert time.monotonic() < deadline, "runtime did not become idle"
            await asyncio.sleep(0.01)
    return rt


def test_serve_starts_from_the_stamp_and_leaves_one_at_a_clean_stop(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace and a change made while nothing was running
    ws = settled(make_workspace)
    ws.write("inbox/hello.txt", "hello again world\n")
    age(ws)

    # When serve starts and stops
    rt = asyncio.run(serve_until_idle(ws))

    # Then it started from the stamp, caught up exactly the changed entity, and left a stamp
    assert rt.start_mode == "incremental"
    assert sorted(ws.runs()) == ["count hello", "shout hello", "summary _"]
    assert ws.read("shouted/hello.txt") == "HELLO AGAIN WORLD!\n"
    assert (ws.root / ".eventrunner" / "stamp.bin").exists()
    report = ws.run()
    assert report["mode"] == "stat"
    assert report["executed"] == 0


def test_a_file_the_watcher_never_delivered_prevents_the_stamp(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace served without a watcher, and a file dropped during the session
    ws = settled(make_workspace)

    async def session() -> None:
        async with Runtime(load_workspace(ws.root), watch=False) as rt:
            await rt.start()
            ws.write("inbox/late.txt", "arrived late\n")
            age(ws)

    asyncio.run(session())
    # Then no stamp vouches for a state that never saw it, and the next run processes it
    assert not (ws.root / ".eventrunner" / "stamp.bin").exists()
    report = ws.run()
    assert report["mode"] != "stat"
    assert "shout late" in ws.runs()


def test_a_failure_during_the_session_prevents_the_stamp(
    make_workspace: MakeWorkspace,
) -> None:
    ws = settled(make_workspace)
    ws.write("inbox/bad.txt", "")
    age(ws)
    broken = ws.path("handlers/echo.py")
    text = broken.read_text().replace(
        'def count(ctx, text: str) -> dict:\n    _log("count", ctx.entity_id)\n',
        'def count(ctx, text: str) -> dict:\n    _log("count", ctx.entity_id)\n'
        '    if not text.strip("!\\n"):\n        raise ValueError("empty")\n',
    )
    broken.write_text(text)
    age(ws)

    rt = asyncio.run(serve_until_idle(ws))

    assert rt.start_mode == "full"  # the handler changed: definitions differ from the stamp
    assert not (ws.root / ".eventrunner" / "stamp.bin").exists()


def test_a_file_too_recent_to_vouch_for_stays_in_the_stamp_serve_leaves(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace, and an input edited while down with an mtime in the future
    # (too recent for anything to cache its hash, so only the stamp serve started from has it)
    ws = settled(make_workspace)
    future = time.time() + 2
    path = ws.write("inbox/hello.txt", "hello future world\n")
    os.utime(path, (future, future))

    # When serve catches up and stops cleanly, leaving a stamp
    rt = asyncio.run(serve_until_idle(ws))
    assert rt.start_mode == "incremental"
    assert sorted(ws.runs()) == ["count hello", "shout hello", "summary _"]
    assert (ws.root / ".eventrunner" / "stamp.bin").exists()
    assert not (ws.root / ".eventrunner" / "stamp.prev").exists()

    # Then a later edit of that file is still seen by the next run (the stamp carried it)
    path = ws.write("inbox/hello.txt", "hello once more again\n")
    past = time.time() - 5  # out of the racy window; only this file (aging outputs would be seen)
    os.utime(path, (past, past))
    report = ws.run()
    assert report["mode"] != "stat"
    assert sorted(ws.runs()) == ["count hello", "shout hello", "summary _"]
    assert ws.read("shouted/hello.txt") == "HELLO ONCE MORE AGAIN!\n"
