"""An aggregate's check under `serve` re-checks only the members marked since the last one (its
cert, run/aggregates.py); it must decide exactly as the full walk of `run` does. Real `serve`
and `run` subprocesses, a handler that reads every member."""

from __future__ import annotations

from pathlib import Path

from conftest import FANIN_CHAIN, MakeWorkspace, Workspace
from serve_helpers import FAST_RUNTIME, Server, wait_until

HANDLERS = """\
from pathlib import Path


def _log(line):
    with open(Path(__file__).resolve().parent.parent / "calls.log", "a") as fh:
        fh.write(line + "\\n")


def upper(r: str) -> str:
    return r.upper()


def count(u: str) -> str:
    return str(len(u.strip()))


def total(c: dict[str, str]) -> str:
    _log(f"total {len(c)}")
    return ",".join(f"{k}={v}" for k, v in sorted(c.items())) + "\\n"
"""


def workspace(make_workspace: MakeWorkspace, n: int = 8) -> Workspace:
    files: dict[str, str | bytes] = {
        "eventrunner.toml": FAST_RUNTIME,
        "pipelines/p.toml": FANIN_CHAIN,
        "handlers/h.py": HANDLERS,
    }
    files.update({f"raw/e{i}.txt": "x" * (i + 1) for i in range(n)})
    return make_workspace(files)


def full_total(ws: Workspace) -> str:
    """What the aggregate holds over today's raw files."""
    counts = {p.stem: len(p.read_text().strip()) for p in ws.path("raw").glob("*.txt")}
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) + "\n"


def total_is(ws: Workspace, text: str) -> bool:
    return ws.exists("total.txt") and ws.read("total.txt") == text


def calls(ws: Workspace) -> list[str]:
    log = ws.path("calls.log")
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    log.unlink()
    return lines


def test_serve_keeps_an_aggregate_right_through_added_changed_and_removed_members(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a built aggregate and `serve` on it
    ws = workspace(make_workspace)
    assert ws.sub("run").code == 0
    calls(ws)
    with Server(ws.root, tmp_path) as server:
        # When members are added, changed and removed, one after the other
        for change in (
            lambda: ws.write("raw/e20.txt", "twenty"),
            lambda: ws.write("raw/e3.txt", "a much longer text"),
            lambda: ws.delete("raw/e5.txt"),
            lambda: ws.write("raw/e21.txt", "z"),
        ):
            change()
            # Then after each the aggregate holds exactly today's members
            wait_until(lambda: total_is(ws, full_total(ws)), "the aggregate to catch up")
        # And an early cutoff (same count) leaves it as it is, without a call
        calls(ws)
        ws.write("raw/e2.txt", "abc")  # was "xxx"
        ws.write("raw/e22.txt", "qq")  # a change after it, to know the first was handled
        wait_until(lambda: total_is(ws, full_total(ws)), "the aggregate to catch up")
        got = calls(ws)
        assert got == ["total 10"], (got, ws.read("total.txt"), server.stderr)
        assert server.stop() == 0, server.stderr
    # And `run` agrees: nothing to do, everything that has its inputs is fresh
    assert ws.sub("run", "--json").json["executed"] == 0
    states = ws.states()
    assert states[("p.total", "_")] == "fresh"


def test_serve_keeps_an_aggregate_waiting_while_a_members_producer_is_held(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a built aggregate and `serve` on it, and one member's count on hold
    ws = workspace(make_workspace)
    assert ws.sub("run").code == 0
    with Server(ws.root, tmp_path) as server:
        before = ws.read("total.txt")
        assert ws.sub("hold", "count", "e1").code == 0
        # When that member's source changes (its upper runs, its count is held) and then
        # another member is added (its count commits: the aggregate is checked again)
        ws.write("raw/e1.txt", "changed")
        wait_until(lambda: ws.exists("up/e1.txt") and ws.read("up/e1.txt") == "CHANGED", "upper")
        ws.write("raw/e30.txt", "thirty")
        wait_until(lambda: ws.exists("count/e30.txt"), "the new member's count")
        # Then the aggregate waits for the held member, as the full walk says it must
        wait_until(lambda: ws.states().get(("p.total", "_")) == "waiting", "the aggregate to wait")
        assert ws.read("total.txt") == before
        # And it keeps waiting when one more member comes (checked from its cert this time)
        ws.write("raw/e31.txt", "thirty-one")
        wait_until(lambda: ws.exists("count/e31.txt"), "the next member's count")
        wait_until(lambda: ws.states().get(("p.total", "_")) == "waiting", "the aggregate to wait")
        assert ws.read("total.txt") == before
        # When the hold is released, the aggregate catches up with both changes
        assert ws.sub("release", "count", "e1").code == 0
        wait_until(lambda: total_is(ws, full_total(ws)), "the aggregate to catch up")
        assert server.stop() == 0, server.stderr
    assert ws.sub("run", "--json").json["executed"] == 0


def test_a_member_output_edited_by_hand_under_serve_never_leaves_the_aggregate_fresh_and_wrong(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a built aggregate and `serve` on it (outputs are not watched)
    ws = workspace(make_workspace)
    assert ws.sub("run").code == 0
    with Server(ws.root, tmp_path) as server:
        ws.write("raw/e20.txt", "twenty")  # a first event: the aggregate's cert is made
        wait_until(lambda: total_is(ws, full_total(ws)), "the aggregate to catch up")
        # When a member's output is edited by hand (no event), then another member is added
        ws.write("count/e3.txt", "999")
        ws.write("raw/e21.txt", "z")
        wait_until(lambda: "e21=1" in ws.read("total.txt"), "the aggregate to run")
        # Then `run` (answered by the server) puts the member back and the aggregate follows
        assert ws.sub("run").code == 0
        assert ws.read("count/e3.txt") == "4"
        assert total_is(ws, full_total(ws))
        assert server.stop() == 0, server.stderr
    states = ws.states()
    assert states[("p.total", "_")] == "fresh" and states[("p.count", "e3")] == "fresh"
