"""A session following a stamp seeds its aggregates' certs from their manifests' member tables
(run/aggregates.py: `Certs.seed`) instead of walking every member: it must decide exactly as
the full walk does, for every kind of member change since the stamp. Real `run` and `serve`
subprocesses; the in-process test shows the walk is gone."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeWorkspace, Workspace, age
from serve_helpers import Server, wait_until
from test_aggregate_certs import HANDLERS, calls, full_total, total_is, workspace

from eventrunner.run.session import Session
from eventrunner.workspace.load import load_workspace


def settled(ws: Workspace) -> None:
    """Built, and a stamp recorded (a no-change run writes it); in subprocesses (the session
    test runs in an event loop)."""
    assert ws.sub("run").code == 0
    age(ws)
    assert ws.sub("run").code == 0
    assert (ws.root / ".eventrunner" / "stamp.bin").exists()
    calls(ws)


# change -> whether the aggregate has to run again (a member output edited or deleted by hand is
# rebuilt by its producer as it was: the aggregate stays as it is)
CHANGES: dict[str, tuple[Callable[[Workspace], object], bool]] = {
    "a member's source changed": (lambda ws: ws.write("raw/e3.txt", "a much longer text"), True),
    "a member added": (lambda ws: ws.write("raw/e20.txt", "twenty"), True),
    "a member removed": (lambda ws: ws.delete("raw/e5.txt"), True),
    "a member output edited by hand": (lambda ws: ws.write("count/e2.txt", "999"), False),
    "a member output deleted by hand": (lambda ws: ws.delete("count/e4.txt"), False),
    "two members changed at once": (
        lambda ws: (ws.write("raw/e1.txt", "q"), ws.write("raw/e6.txt", "a b c d e f g h")),
        True,
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_run_from_a_stamp_folds_every_kind_of_member_change_into_the_aggregate(
    make_workspace: MakeWorkspace, change: str
) -> None:
    # Given a settled workspace with a stamp
    ws = workspace(make_workspace)
    settled(ws)

    # When a member changes and `run` follows the change from the stamp
    make_change, reruns = CHANGES[change]
    make_change(ws)
    age(ws)
    report = ws.run()

    # Then the run was incremental, the aggregate ran (once) if it had to and holds exactly
    # today's members, every state is fresh, and the next run finds nothing to do
    assert report["mode"] == "incremental"
    members = len(list(ws.path("raw").glob("*.txt")))
    assert calls(ws) == ([f"total {members}"] if reruns else [])
    assert ws.read("total.txt") == full_total(ws)
    gone = {(q, "e5"): "orphaned" for q in ("p.upper", "p.count")} if "removed" in change else {}
    assert {k: v for k, v in ws.states().items() if v != "fresh"} == gone
    age(ws)
    assert ws.run()["executed"] == 0


def test_a_member_change_that_leaves_its_output_as_it_was_leaves_the_aggregate_alone(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace with a stamp
    ws = workspace(make_workspace)
    settled(ws)
    before = ws.read("total.txt")

    # When a member's source changes but not its count (early cutoff)
    ws.write("raw/e3.txt", "abcd")  # was "xxxx": the same length
    age(ws)
    report = ws.run()

    # Then the member's chain ran, the aggregate did not, and it is fresh and right
    assert report["mode"] == "incremental"
    assert calls(ws) == []
    assert ws.read("total.txt") == before == full_total(ws)
    assert set(ws.states().values()) == {"fresh"}


def test_a_broken_member_log_since_the_stamp_falls_back_to_the_walk(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace whose aggregate's member log is then damaged
    ws = workspace(make_workspace)
    settled(ws)
    logs = list((ws.root / ".eventrunner").rglob("*.members"))
    assert logs
    for log in logs:
        log.write_bytes(b'{"count/e0.txt": "not the hash"}\n')

    # When a member changes and `run` follows it
    ws.write("raw/e3.txt", "a much longer text")
    age(ws)
    ws.run()

    # Then the aggregate is rebuilt right, not trusted from the damaged table
    assert ws.read("total.txt") == full_total(ws)
    assert set(ws.states().values()) == {"fresh"}


async def test_a_session_from_a_stamp_checks_only_the_changed_members_producers(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace of 40 members with a stamp, and one member's source changed
    ws = workspace(make_workspace, n=40)
    settled(ws)
    ws.write("raw/e7.txt", "a much longer text")
    age(ws)

    # When a `run` session starts from the stamp and works through the change (each verdict
    # its evaluator computes is counted: a member walk computes every member producer's)
    session = Session(load_workspace(ws.root), "run")
    await session.start()
    checked: list[tuple[str, str]] = []
    try:
        assert session.mode == "incremental" and session.engine is not None
        evaluator = session.engine.evaluator
        verdict = evaluator.verdict

        def counted(q: str, eid: str, *args: Any, **kwargs: Any) -> Any:
            checked.append((q, eid))
            return verdict(q, eid, *args, **kwargs)

        evaluator.verdict = counted  # type: ignore[method-assign]
        await session.engine.wait_idle()
    finally:
        await session.close()

    # Then the aggregate was checked without walking its members: of the 40 members'
    # producers, only the changed one's was checked
    assert ("p.total", "_") in checked
    assert {e for q, e in checked if q == "p.count"} == {"e7"}
    assert ws.read("total.txt") == full_total(ws)


def test_serve_from_a_stamp_keeps_the_aggregate_right_through_drops(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a settled workspace with a stamp, and a member changed while nothing ran
    ws = workspace(make_workspace)
    settled(ws)
    ws.write("count/e2.txt", "999")
    ws.write("raw/e4.txt", "four four four")
    age(ws)

    # When `serve` starts from the stamp, and members are then added, changed and removed
    with Server(ws.root, tmp_path) as server:
        wait_until(lambda: total_is(ws, full_total(ws)), "the catch-up")
        assert "incremental check" in server.stderr, server.stderr
        for change in (
            lambda: ws.write("raw/e20.txt", "twenty"),
            lambda: ws.write("raw/e3.txt", "a much longer text"),
            lambda: ws.delete("raw/e5.txt"),
        ):
            change()
            # Then after each the aggregate holds exactly today's members
            wait_until(lambda: total_is(ws, full_total(ws)), "the aggregate to catch up")
        assert server.stop() == 0, server.stderr
    # And `run` agrees: nothing to do
    assert ws.sub("run", "--json").json["executed"] == 0
    assert ws.states()[("p.total", "_")] == "fresh"


ORDER_HANDLERS = HANDLERS.replace(
    'return ",".join(f"{k}={v}" for k, v in sorted(c.items())) + "\\n"',
    'return ",".join(c) + "\\n"  # the order the members are given in',
)


def test_a_full_call_from_a_seeded_cert_gets_its_members_in_the_order_of_a_full_walk(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace whose fan-in writes its members in the order it is given them
    ws = workspace(make_workspace)
    ws.write("handlers/h.py", ORDER_HANDLERS)
    assert ws.sub("run").code == 0
    age(ws)
    settled(ws)

    # When members are added after the stamp (last in the manifest's member log)
    ws.write("raw/e20.txt", "twenty")
    ws.write("raw/e11.txt", "eleven")
    age(ws)
    assert ws.run()["mode"] == "incremental"

    # Then the fan-in got every member in member order, as a run without a stamp gives them
    names = sorted(p.stem for p in ws.path("raw").glob("*.txt"))
    assert ws.read("total.txt") == ",".join(names) + "\n"


HOLDING_HANDLERS = HANDLERS.replace(
    "def total(c: dict[str, str]) -> str:\n",
    """def total(c: dict[str, str]) -> str:
    root = Path(__file__).resolve().parent.parent
    if (root / "hold").exists():  # the test kills the run here, mid-call
        (root / "started").write_text("")
        while True:
            pass
""",
)


def test_a_run_killed_while_following_a_stamp_then_an_edit_then_a_run_is_right(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace with a stamp, whose fan-in call blocks while `hold` exists
    ws = workspace(make_workspace)
    ws.write("handlers/h.py", HOLDING_HANDLERS)
    assert ws.sub("run").code == 0
    age(ws)
    settled(ws)

    # When a member changes, the run that follows it is killed inside the fan-in's call,
    ws.write("raw/e3.txt", "a much longer text")
    ws.write("hold", "")
    age(ws)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws.root), "run", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: ws.exists("started") or proc.poll() is not None, "the fan-in call")
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    # and another member is edited before the next run
    ws.delete("hold")
    ws.write("raw/e5.txt", "five five five five five")
    age(ws)
    report = ws.run()

    # Then that run trusts no stamp (a full check) and the aggregate holds today's members
    assert report["mode"] == "full"
    assert ws.read("total.txt") == full_total(ws)
    assert set(ws.states().values()) == {"fresh"}
    age(ws)
    assert ws.run()["executed"] == 0
