"""Aggregates (fan-in) wait for their members to settle: checked and run once per build."""

from __future__ import annotations

from conftest import FANIN_CHAIN, LOG_HELPER, MakeWorkspace, Workspace

from eventrunner.core.graph import Graph
from eventrunner.run.settle import Settling
from eventrunner.workspace.load import load_workspace

HANDLERS = (
    LOG_HELPER
    + """

def upper(ctx, r: str) -> str:
    _log("upper", ctx.entity_id)
    return r.upper()


def count(ctx, u: str) -> str:
    _log("count", ctx.entity_id)
    return str(len(u.strip()))


def total(ctx, c: dict[str, str]) -> str:
    _log("total", ctx.entity_id)
    return ",".join(f"{k}={v}" for k, v in sorted(c.items())) + "\\n"
"""
)


def chain(make_workspace: MakeWorkspace, n: int) -> Workspace:
    files: dict[str, str | bytes] = {"pipelines/p.toml": FANIN_CHAIN, "handlers/h.py": HANDLERS}
    files.update({f"raw/e{i:03}.txt": "x" * (i % 7 + 1) for i in range(n)})
    return make_workspace(files)


def expected_total(n: int) -> str:
    return ",".join(f"e{i:03}={i % 7 + 1}" for i in range(n)) + "\n"


def test_a_cold_build_runs_the_aggregate_once_after_every_member(
    make_workspace: MakeWorkspace,
) -> None:
    # Given 60 entities through map -> map -> fan-in, with 4 workers
    ws = chain(make_workspace, 60)
    # When built from nothing
    report = ws.run("-j", "4")
    # Then every member ran once and the aggregate exactly once, over all members
    runs = ws.runs()
    assert runs.count("total _") == 1
    assert len([r for r in runs if r.startswith("count ")]) == 60
    assert report["executed"] == 121 and report["failed"] == 0
    assert ws.read("total.txt") == expected_total(60)
    # And the aggregate ran last: after every count
    assert runs.index("total _") == len(runs) - 1


def test_added_removed_and_modified_members_rerun_the_aggregate_once(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built aggregate
    ws = chain(make_workspace, 10)
    ws.run()
    ws.runs()
    # When one member is added, one removed and one modified
    ws.write("raw/e100.txt", "yyyy")
    ws.delete("raw/e001.txt")
    ws.write("raw/e002.txt", "zz")
    # Then the aggregate reruns once, over exactly today's members
    assert ws.run()["failed"] == 0
    runs = ws.runs()
    assert runs.count("total _") == 1
    total = dict(kv.split("=") for kv in ws.read("total.txt").strip().split(","))
    assert "e001" not in total and total["e100"] == "4" and total["e002"] == "2"
    assert len(total) == 10


def test_a_member_whose_output_did_not_change_leaves_the_aggregate_fresh(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built aggregate
    ws = chain(make_workspace, 10)
    ws.run()
    ws.runs()
    # When an input changes but its count stays the same (early cutoff at count)
    ws.write("raw/e003.txt", "abcd")  # was "xxxx": same length
    ws.run()
    runs = ws.runs()
    # Then upper and count re-ran for that entity, and the aggregate did not
    assert runs == ["upper e003", "count e003"]
    assert set(ws.states().values()) == {"fresh"}


def test_a_failing_member_does_not_hold_the_aggregate_forever(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a member that fails
    ws = chain(make_workspace, 5)
    ws.write(
        "handlers/h.py",
        HANDLERS.replace(
            '    _log("count", ctx.entity_id)\n',
            '    _log("count", ctx.entity_id)\n    if ctx.entity_id == "e002":\n        raise ValueError("bad member")\n',
        ),
    )
    # When built: the run ends (no hang), the aggregate waits on the failed member
    report = ws.run(expect=1)
    assert report["failed"] == 1
    states = ws.states()
    assert states[("p.count", "e002")] == "failed"
    assert states[("p.total", "_")] == "waiting"
    assert "total _" not in ws.runs()


def test_settling_holds_an_aggregate_while_upstream_is_in_flight(
    make_workspace: MakeWorkspace,
) -> None:
    # Given the chain's graph
    ws = chain(make_workspace, 1)
    graph: Graph = load_workspace(ws.root).graph
    settle = Settling(graph)
    # When two upstream states are in flight
    settle.started("p.upper")
    settle.started("p.count")
    # Then the aggregate is held, map stages are not
    assert settle.hold("p.total", "_", {})
    assert not settle.hold("p.count", "e1", {"id": "e1"})
    # And it is released only when the last upstream state leaves flight
    assert settle.done("p.upper") == []
    assert settle.done("p.count") == [("p.total", "_", {})]
    assert settle.waiting == 0


def test_a_build_killed_mid_way_finishes_with_the_right_aggregate(
    make_workspace: MakeWorkspace,
) -> None:
    import signal
    import subprocess
    import sys
    import time

    # Given 150 entities, and a cold build SIGKILLed once 100 handlers have started
    ws = chain(make_workspace, 150)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws.root), "run", "-j", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            log = ws.path("runs.log")
            if log.exists() and log.read_bytes().count(b"\n") >= 100:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not ws.exists("total.txt")
    ws.runs()
    # When the build is run again to completion
    assert ws.sub("run", "-j", "2").code == 0
    # Then the aggregate holds every member, ran once, and everything is fresh
    assert ws.read("total.txt") == expected_total(150)
    assert ws.runs().count("total _") == 1
    assert set(ws.states().values()) == {"fresh"}
