"""Crash safety: SIGKILL a real `eventrunner run` mid-way; no state is ever fresh with wrong content."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import MakeWorkspace, Workspace

N = 300

PIPELINE = """\
name = "crash"

[stages.first]
handler = "h:first"
inputs  = { text = "inbox/{n}.txt" }
output  = "mid/{n}.txt"

[stages.second]
handler = "h:second"
inputs  = { text = "mid/{n}.txt" }
output  = "out/{n}.txt"
"""

# Each execution appends a progress line first, so the test can kill at a known point.
HANDLERS = """\
def _progress(ctx):
    with open(ctx.data_root / "progress.log", "a") as fh:
        fh.write(f"{ctx.stage} {ctx.entity_id}\\n")


def first(ctx, text: str) -> str:
    _progress(ctx)
    return text.upper() * 3


def second(ctx, text: str) -> str:
    _progress(ctx)
    return text[::-1] + f"{len(text)}\\n"
"""


def first(text: str) -> str:
    return text.upper() * 3


def second(text: str) -> str:
    return text[::-1] + f"{len(text)}\n"


def expected(ws: Workspace, stage: str, n: str) -> str:
    """What a stage's output must hold given the current source input."""
    mid = first(ws.read(f"inbox/{n}.txt"))
    return mid if stage == "crash.first" else second(mid)


def output_of(stage: str, n: str) -> str:
    return f"mid/{n}.txt" if stage == "crash.first" else f"out/{n}.txt"


def progress_lines(ws: Workspace) -> int:
    try:
        with open(ws.path("progress.log"), "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_after(ws: Workspace, executions: int) -> int:
    """Start `run -j 2`, SIGKILL it once `executions` handlers started; the return code."""
    ws.path("progress.log").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws.root), "run", "-j", "2", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    try:
        while (
            progress_lines(ws) < executions and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    return proc.returncode


def assert_no_fresh_state_has_wrong_content(ws: Workspace) -> int:
    """Check every row `entities` reports fresh against the recomputed content; returns how many."""
    fresh = 0
    for (stage, n), state in ws.states().items():
        if state == "fresh":
            fresh += 1
            assert ws.read(output_of(stage, n)) == expected(ws, stage, n), (stage, n)
    return fresh


@pytest.fixture
def big(make_workspace: MakeWorkspace) -> Workspace:
    files = {"pipelines/crash.toml": PIPELINE, "handlers/h.py": HANDLERS}
    files.update({f"inbox/e{i:03d}.txt": f"entity {i} says hello\n" for i in range(N)})
    return make_workspace(files)


@pytest.mark.parametrize(
    ("phase", "kill_at"),
    [("first run", 60), ("first run", 300), ("update", 120), ("update", 400)],
)
def test_sigkill_mid_run_never_leaves_a_fresh_state_with_wrong_content(
    big: Workspace, phase: str, kill_at: int
) -> None:
    # Given a workspace (in "update": fully run once, then every input changed)
    if phase == "update":
        assert big.sub("run", "-j", "2").code == 0
        for i in range(N):
            big.write(f"inbox/e{i:03d}.txt", f"entity {i} now says goodbye\n")

    # When a run is killed with SIGKILL part-way through
    code = kill_after(big, kill_at)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"

    # Then no state is reported fresh unless its output is exactly right
    fresh_after_kill = assert_no_fresh_state_has_wrong_content(big)
    assert fresh_after_kill < 2 * N

    # When the run is repeated to completion
    res = big.sub("run", "-j", "2", "--json")

    # Then it succeeds, every output is right and every state is fresh
    assert res.code == 0, res.err
    for i in range(N):
        n = f"e{i:03d}"
        for stage in ("crash.first", "crash.second"):
            assert big.read(output_of(stage, n)) == expected(big, stage, n), (stage, n)
    counts = big.cli("status", "--json").json["pipelines"]["crash"]["stages"]
    assert counts["first"]["fresh"] == N and counts["second"]["fresh"] == N
    assert sum(counts["first"].values()) == N and sum(counts["second"].values()) == N
    assert big.run()["executed"] == 0
