"""`run` and `status --check` as gates: exit 1 while a selected state is not fresh, naming
each one and why; held states are reported, and count only for `status --check` unless
`--allow-held`. Through real subprocesses, on disk and through a running server."""

from __future__ import annotations

from pathlib import Path

from conftest import MakeWorkspace, Workspace, age
from serve_helpers import serving, wait_until

PIPELINE = """\
name = "p"

[stages.clean]
handler = "h:clean"
inputs  = { raw = "in/{n}.txt" }
output  = "clean/{n}.txt"

[stages.upper]
handler = "h:upper"
inputs  = { text = "clean/{n}.txt" }
output  = "up/{n}.txt"

[stages.book]
handler = "h:book"
inputs  = { parts = "up/{n}.txt" }
output  = "book.txt"
"""

HANDLERS = """\
from eventrunner import PermanentError


def clean(raw: str) -> str:
    if raw.startswith("bad"):
        raise ValueError("cannot clean " + raw.strip())
    if raw.startswith("broken"):
        raise PermanentError("broken input")
    return raw.strip() + "\\n"


def upper(text: str) -> str:
    return text.upper()


def book(parts: dict[str, str]) -> str:
    return "".join(parts[k] for k in sorted(parts))
"""


def workspace(make_workspace: MakeWorkspace, **inputs: str) -> Workspace:
    files: dict[str, str | bytes] = {"pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS}
    files.update({f"in/{name}.txt": text for name, text in inputs.items()})
    return make_workspace(files)


def not_fresh(data: dict[str, object]) -> set[tuple[str, str, str]]:
    entries = data["not_fresh"]
    assert isinstance(entries, list)
    return {(e["stage"], e["entity"], e["state"]) for e in entries}


FAILED_AND_BELOW = {
    ("p.clean", "b", "failed"),
    ("p.upper", "b", "waiting"),
    ("p.book", "_", "waiting"),
}


def test_run_after_a_failure_keeps_exiting_1_and_names_what_is_not_fresh(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace where one entity fails to clean
    ws = workspace(make_workspace, a="ok", b="bad")

    # When it runs, Then it exits 1 and names the failure and what waits on it
    first = ws.sub("run", "--json")
    assert first.code == 1, first.err
    assert not_fresh(first.json) == FAILED_AND_BELOW
    # And every later run exits 1 too, saying which: the one that finds nothing to do, and
    # the next, answered from stats alone
    age(ws)
    nothing_to_do = ws.sub("run", "--json")
    assert nothing_to_do.code == 1 and nothing_to_do.json["executed"] == 0
    assert not_fresh(nothing_to_do.json) == FAILED_AND_BELOW
    again = ws.sub("run", "--json")
    assert again.code == 1 and again.json["mode"] == "stat", again.out
    assert not_fresh(again.json) == FAILED_AND_BELOW
    human = ws.sub("run")
    assert human.code == 1
    assert "FAILED p.clean b: attempt 1 failed: ValueError: cannot clean bad (retry at" in human.out
    assert "WAITING p.upper b: waiting for p.clean b (failed)" in human.out
    # And the documented --json keys are all still there
    assert {"executed", "succeeded", "failed", "skipped", "duration_s"} <= set(again.json)


def test_a_dead_state_fails_the_gate_until_retried_and_fixed(make_workspace: MakeWorkspace) -> None:
    ws = workspace(make_workspace, a="ok", b="broken")
    assert ws.sub("run").code == 1
    assert ("p.clean", "b", "dead") in not_fresh(ws.sub("run", "--json").json)

    # When the input is fixed, Then the run brings everything up and exits 0
    ws.write("in/b.txt", "fine now")
    fixed = ws.sub("run", "--json")
    assert fixed.code == 0, fixed.out
    assert fixed.json["not_fresh"] == []
    assert ws.sub("run").code == 0


def test_run_of_a_selection_gates_only_the_selected_states(make_workspace: MakeWorkspace) -> None:
    ws = workspace(make_workspace, a="ok", b="bad")
    ws.sub("run")

    # Entity a is fresh in every stage that has it: its selection passes
    assert ws.sub("run", "--entity", "a", "--stage", "upper").code == 0
    # upper b waits on the failed clean b: selecting it fails, and says why
    res = ws.sub("run", "--stage", "upper", "--json")
    assert res.code == 1
    assert not_fresh(res.json) == {("p.upper", "b", "waiting")}


def test_held_states_are_reported_by_run_but_only_status_check_counts_them(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a hold on the aggregate before the first run
    ws = workspace(make_workspace, a="ok", c="fine")
    assert ws.sub("hold", "book").code == 0

    # When running, Then the run exits 0 (a hold says "not now") and reports the held state
    res = ws.sub("run", "--json")
    assert res.code == 0, res.out
    assert [(e["stage"], e["state"], e["held"]) for e in res.json["not_fresh"]] == [
        ("p.book", "held", True)
    ]
    assert "1 of them held (not counted)" in ws.sub("run").out
    # And status --check counts it, unless --allow-held
    check = ws.sub("status", "--check")
    assert check.code == 1
    assert "HELD p.book _: on manual hold" in check.out
    assert ws.sub("status", "--check", "--allow-held").code == 0
    # When released and run, Then everything is fresh and the check passes
    ws.sub("release", "book")
    assert ws.sub("run").code == 0
    passed = ws.sub("status", "--check")
    assert passed.code == 0 and "every state is fresh" in passed.out


def test_states_waiting_only_on_held_ones_count_as_held(make_workspace: MakeWorkspace) -> None:
    ws = workspace(make_workspace, a="ok", b="bad")
    ws.sub("run")
    ws.sub("hold", "clean", "b")

    data = ws.sub("status", "--check", "--json").json
    by_state = {(e["stage"], e["entity"]): e["held"] for e in data["not_fresh"]}
    assert by_state == {("p.clean", "b"): True, ("p.upper", "b"): True, ("p.book", "_"): True}
    assert ws.sub("status", "--check", "--allow-held").code == 0
    assert ws.sub("run").code == 0
    # A failure below a hold is no hold: upper b fails once the hold is lifted elsewhere
    ws.sub("release", "clean")
    assert ws.sub("status", "--check", "--allow-held").code == 1


def test_status_check_json_keeps_the_documented_shape_and_adds_not_fresh(
    make_workspace: MakeWorkspace,
) -> None:
    ws = workspace(make_workspace, a="ok", b="bad")
    ws.sub("run")
    plain = ws.sub("status", "--json")
    checked = ws.sub("status", "--check", "--json")

    assert plain.code == 0 and set(plain.json) == {"pipelines"}
    assert checked.code == 1 and set(checked.json) == {"pipelines", "not_fresh"}
    assert not_fresh(checked.json) == FAILED_AND_BELOW


def test_run_and_status_check_gate_the_same_through_a_running_server(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a workspace with a failing entity, served
    ws = workspace(make_workspace, a="ok", b="bad")
    with serving(ws.root, tmp_path / "logs") as server:
        wait_until(lambda: ws.exists("book.txt") or ws.exists("up/a.txt"), "the first outputs")
        # When `run` and `status --check` go through the server
        run = ws.sub("run", "--json")
        check = ws.sub("status", "--check", "--json")
        human = ws.sub("status", "--check")
        # Then they exit 1 and name the same states as without a server
        assert run.code == 1 and run.json["mode"] == "server", run.out
        assert not_fresh(run.json) == FAILED_AND_BELOW
        assert check.code == 1 and not_fresh(check.json) == FAILED_AND_BELOW
        assert "FAILED p.clean b" in human.out
        # And once the input is fixed, both pass
        ws.write("in/b.txt", "good")
        fixed = ws.sub("run", "--json")
        assert fixed.code == 0, fixed.out
        assert ws.sub("status", "--check").code == 0
        assert server.proc is not None and server.proc.poll() is None


def test_a_one_change_run_gates_its_aggregate_as_a_full_check_would(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace brought up to date (the next runs follow changes from the stamp)
    ws = workspace(make_workspace, a="ok", b="fine", c="good")
    assert ws.sub("run", "--json").code == 0
    age(ws)
    assert ws.sub("run", "--json").json["executed"] == 0  # leaves a stamp out of the racy window
    # When one member's input is edited into one that fails
    (ws.root / "in" / "b.txt").write_text("bad again")
    failing = ws.sub("run", "--json")
    # Then the incremental run's gate names the failure and the aggregate waiting on it
    assert failing.json["mode"] == "incremental", failing.out
    assert failing.code == 1
    assert not_fresh(failing.json) == FAILED_AND_BELOW
    # And a full check says the same
    check = ws.sub("status", "--check", "--json")
    assert check.code == 1 and not_fresh(check.json) == FAILED_AND_BELOW
    # When the member is fixed, Then the aggregate is remade and the gate passes
    (ws.root / "in" / "b.txt").write_text("mended")
    fixed = ws.sub("run", "--json")
    assert fixed.code == 0 and fixed.json["not_fresh"] == [], fixed.out
    assert (ws.root / "book.txt").read_text() == "OK\nMENDED\nGOOD\n"
    assert ws.sub("status", "--check", "--json").code == 0


def test_a_run_through_a_server_reports_held_states_and_gates_only_its_selection(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a served workspace with a failing entity and a hold on another's first stage
    ws = workspace(make_workspace, a="ok", b="bad", c="fine")
    assert ws.sub("run").code == 1
    assert ws.sub("hold", "clean", "c").code == 0
    ws.write("in/c.txt", "fine again")
    with serving(ws.root, tmp_path / "logs") as server:
        # When the whole workspace is run through the server
        whole = ws.sub("run", "--json")
        # Then it names the failure and what waits on it, and the held state (not counted)
        assert whole.code == 1 and whole.json["mode"] == "server", whole.out
        held = {(e["stage"], e["entity"]) for e in whole.json["not_fresh"] if e["held"]}
        assert ("p.clean", "c") in held
        assert not_fresh(whole.json) >= FAILED_AND_BELOW
        # And a run of the held entity alone passes (a hold says "not now"), while one of
        # the failing entity names only that entity's states
        only_c = ws.sub("run", "--entity", "c", "--json")
        assert only_c.code == 0, only_c.out
        assert {(e["stage"], e["entity"]) for e in only_c.json["not_fresh"]} <= {
            ("p.clean", "c"),
            ("p.upper", "c"),
        }
        only_b = ws.sub("run", "--entity", "b", "--json")
        assert only_b.code == 1
        assert not_fresh(only_b.json) == {("p.clean", "b", "failed"), ("p.upper", "b", "waiting")}
        assert server.proc is not None and server.proc.poll() is None
