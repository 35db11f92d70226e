"""Executors: hung handlers never stop the rest, dead workers fail one attempt, timeouts count
run time only. Real handlers that block, os._exit or get SIGKILLed, in real workspaces."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from call_helpers import stage_call
from conftest import MakeWorkspace, Workspace
from serve_helpers import FAST_RUNTIME, read, until
from serve_helpers import make_workspace as make_files

from eventrunner.core.errors import HandlerTimeout
from eventrunner.run import events as ev
from eventrunner.run.thread_pool import ThreadExecutor
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

# Blocks until the test creates `release` (bounded, so a thread left behind ends on its own).
HANDLERS = """\
import os
import signal
import time
from pathlib import Path


def hang(ctx, t: str) -> str:
    (ctx.data_root / "pids").mkdir(exist_ok=True)
    (ctx.data_root / "pids" / ctx.entity_id).write_text(str(os.getpid()))
    deadline = time.monotonic() + 20
    while not (ctx.data_root / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (ctx.data_root / "pids" / (ctx.entity_id + ".returned")).write_text("")
    return "late " + t


def plain(t: str) -> str:
    return t.upper()


def exits(t: str) -> str:
    os._exit(3)


def killed(t: str) -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return t


def leaves(t: str) -> str:
    raise SystemExit(3)
"""

# `hang` runs first (priority) and outlives its timeout on both entities of a two-job run.
HUNG_PIPELINE = """\
[stages.hang]
handler = "h:hang"
inputs = { t = "in/{n}.txt" }
output = "hung/{n}.txt"
timeout = "300ms"
priority = 10

[stages.plain]
handler = "h:plain"
inputs = { t = "in/{n}.txt" }
output = "plain/{n}.txt"

[stages.timed]
handler = "h:plain"
inputs = { t = "in/{n}.txt" }
output = "timed/{n}.txt"
timeout = "1s"
"""


def _workspace(make_workspace: MakeWorkspace, pipeline: str, toml: str = "") -> Workspace:
    files: dict[str, str | bytes] = {
        "pipelines/p.toml": pipeline,
        "handlers/h.py": HANDLERS,
        "in/a.txt": "a",
        "in/b.txt": "b",
    }
    if toml:
        files["eventrunner.toml"] = toml
    return make_workspace(files)


def test_hung_sync_handlers_time_out_and_every_other_stage_still_runs(
    make_workspace: MakeWorkspace,
) -> None:
    # Given two handlers that hang past their timeout, holding both of a two-job run's slots
    ws = _workspace(make_workspace, HUNG_PIPELINE)
    try:
        # When the workspace runs (in a process of its own: a hang must not hang the test)
        res = ws.sub("run", "--json", "-j", "2", timeout=15)
    finally:
        ws.write("release", "")
    # Then the hung attempts failed as timed out ...
    report = json.loads(res.out)
    assert res.code == 1, res.err
    assert sorted((f["stage"], f["error"]) for f in report["failures"]) == [
        ("p.hang", "HandlerTimeout: timed out after 0.3s"),
        ("p.hang", "HandlerTimeout: timed out after 0.3s"),
    ]
    # ... and every other state ran: a stage with no timeout, and one whose timeout never
    # counted the time it waited
    assert report["succeeded"] == 4
    assert [ws.read(f"{d}/{n}.txt") for d in ("plain", "timed") for n in "ab"] == list("ABAB")
    # And the abandoned threads were named in the log
    assert "its thread is abandoned and replaced" in res.err


# -- the thread executor alone ------------------------------------------------------------------
async def _until(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


QUEUE_PIPELINE = """\
[stages.hang]
handler = "h:hang"
inputs = { t = "in/{n}.txt" }
output = "hung/{n}.txt"

[stages.quick]
handler = "h:plain"
inputs = { t = "in/{n}.txt" }
output = "quick/{n}.txt"
timeout = "500ms"
"""


async def test_a_timeout_counts_the_handlers_own_run_time_not_its_wait_for_a_thread(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a one-thread executor busy with a handler that has no timeout
    ws = _workspace(make_workspace, QUEUE_PIPELINE)
    pool = ThreadExecutor(1)
    try:
        busy = pool.submit(stage_call(ws.root, "p.hang", "a"))
        await _until(lambda: ws.exists("pids/a"), "the first handler to start")
        # When a quick call with a 500 ms timeout waits behind it for longer than that
        submitted = time.monotonic()
        quick = pool.submit(stage_call(ws.root, "p.quick", "b"))
        await _until(lambda: time.monotonic() - submitted > 0.75, "its timeout to pass")
        ws.write("release", "")
        # Then both succeed: the wait was not run time
        assert (await busy).hashes and (await quick).hashes
    finally:
        ws.write("release", "")
        await pool.close()


async def test_past_the_cap_hung_threads_cost_capacity_until_they_return(
    make_workspace: MakeWorkspace, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a thread executor that replaces no abandoned thread
    ws = _workspace(make_workspace, HUNG_PIPELINE)
    pool = ThreadExecutor(2, max_abandoned=0)
    changes: list[int] = []
    pool.on_capacity_change(lambda: changes.append(pool.capacity))
    try:
        # When a handler hangs past its timeout
        with (
            caplog.at_level(logging.WARNING, logger="eventrunner.executor"),
            pytest.raises(HandlerTimeout, match=r"timed out after 0\.3s"),
        ):
            await pool.submit(stage_call(ws.root, "p.hang", "a"))
        # Then its slot is lost, with an error that says why and what to do
        assert pool.capacity == 1 and changes == [1]
        assert 'use executor = "process"' in caplog.text
        assert pool.abandoned == 1
        # And it comes back once the handler returns, its late result thrown away
        ws.write("release", "")
        # (the thread frees the slot at once; the listener hears of it on the loop, a moment later)
        await _until(lambda: changes == [1, 2], "the slot to come back")
        assert pool.capacity == 2
        assert ws.exists("pids/a.returned")
        assert list((ws.root / "hung").iterdir()) == []
        # And the executor still runs calls
        assert (await pool.submit(stage_call(ws.root, "p.plain", "b"))).hashes
    finally:
        ws.write("release", "")
        await pool.close()


# -- the process executor -----------------------------------------------------------------------
PROCESS = '[runtime]\nexecutor = "process"\nretry = { backoff = "1d", max_backoff = "1d" }\n'

DEATH_PIPELINE = """\
[stages.boom]
handler = "h:{handler}"
inputs = {{ t = "in/{{n}}.txt" }}
output = "boom/{{n}}.txt"
priority = 10

[stages.plain]
handler = "h:plain"
inputs = {{ t = "in/{{n}}.txt" }}
output = "plain/{{n}}.txt"
"""


@pytest.mark.parametrize(
    ("handler", "reason"),
    [("exits", "exit code 3"), ("killed", "killed by signal SIGKILL")],
)
def test_a_dead_worker_process_fails_only_its_own_attempt(
    make_workspace: MakeWorkspace, handler: str, reason: str
) -> None:
    # Given the process executor with one worker, and a handler that kills its own process
    ws = _workspace(make_workspace, DEATH_PIPELINE.format(handler=handler), PROCESS)

    # When it runs first (priority) on two entities, then the other stage on two
    report = ws.run("-j", "1", expect=1)

    # Then each of its attempts failed with the reason, and each time a new worker took over
    error = f"WorkerLost: the worker process running the handler died ({reason})"
    assert sorted((f["entity"], f["error"]) for f in report["failures"]) == [
        ("a", error),
        ("b", error),
    ]
    assert report["succeeded"] == 2
    assert (ws.read("plain/a.txt"), ws.read("plain/b.txt")) == ("A", "B")
    states = ws.states()
    assert (states[("p.boom", "a")], states[("p.boom", "b")]) == ("failed", "failed")


@pytest.mark.parametrize("toml", ["", PROCESS], ids=["thread", "process"])
def test_a_handler_calling_sys_exit_fails_its_own_state_only(
    make_workspace: MakeWorkspace, toml: str
) -> None:
    # Given a handler that raises SystemExit, in a thread or a worker process
    pipeline = DEATH_PIPELINE.format(handler="leaves")
    ws = _workspace(make_workspace, pipeline, toml)

    # When it runs
    report = ws.run("-j", "1", expect=1)

    # Then its states failed, saying what it raised, and the rest ran
    error = "HandlerError: the handler raised SystemExit: 3"
    assert [f["error"] for f in report["failures"]] == [error, error]
    assert report["succeeded"] == 2


KILL_PIPELINE = """\
[stages.hang]
handler = "h:hang"
inputs = { t = "in/{n}.txt" }
output = "hung/{n}.txt"
timeout = "300ms"
priority = 10

[stages.plain]
handler = "h:plain"
inputs = { t = "in/{n}.txt" }
output = "plain/{n}.txt"
"""


def test_process_executor_kills_a_handler_over_its_timeout(
    make_workspace: MakeWorkspace,
) -> None:
    # Given the process executor and a handler that hangs past its timeout on both entities
    ws = _workspace(make_workspace, KILL_PIPELINE, PROCESS)
    try:
        # When it runs with two workers (in a process of its own: a hang must not hang the test)
        res = ws.sub("run", "--json", "-j", "2", timeout=15)
        # Then both hung attempts timed out and the other stage ran
        report = json.loads(res.out)
        errors = [f["error"] for f in report["failures"]]
        assert errors == ["HandlerTimeout: timed out after 0.3s"] * 2, res.err
        assert report["succeeded"] == 2
        # And the hung handlers were killed, not left running: gone before being released
        for entity in "ab":
            pid = int(ws.read(f"pids/{entity}"))
            deadline = time.monotonic() + 10
            while _alive(pid):
                assert time.monotonic() < deadline, f"worker {pid} still alive"
                time.sleep(0.01)
            assert not ws.exists(f"pids/{entity}.returned")
    finally:
        ws.write("release", "")


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped by the forkserver)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "(zombie)" not in status


async def test_a_server_keeps_running_other_stages_after_handlers_hang(tmp_path: Path) -> None:
    # Given a server whose hanging stage outlives its timeout on every entity
    pipeline = HUNG_PIPELINE.replace(
        "priority = 10\n", "priority = 10\nretry = { max_attempts = 1 }\n"
    )
    root = make_files(
        tmp_path / "ws",
        {
            "eventrunner.toml": FAST_RUNTIME,
            "pipelines/p.toml": pipeline,
            "handlers/h.py": HANDLERS,
            "in/a.txt": "a",
            "in/b.txt": "b",
        },
    )
    try:
        async with Runtime(load_workspace(root)) as rt:
            failed: list[ev.Failed] = []
            rt.events.subscribe(lambda e: failed.append(e) if isinstance(e, ev.Failed) else None)
            await rt.start()
            await until(lambda: len(failed) >= 2, "the hung attempts to time out")
            # When a new file arrives (its hang state hangs too)
            (root / "in/c.txt").write_text("c")
            # Then the other stages run for it, and none of their states is left running
            await until(lambda: read(root / "plain/c.txt") == "C", "plain c")
            await until(lambda: read(root / "timed/c.txt") == "C", "timed c")
            index = rt.index
            assert index is not None
            await until(lambda: index.running <= {("p.hang", "c")}, "nothing else running")
            assert {(e.stage, e.entity) for e in failed} >= {("p.hang", "a"), ("p.hang", "b")}
            assert all(e.stage == "p.hang" and "timed out" in e.error for e in failed)
    finally:
        (root / "release").write_text("")
