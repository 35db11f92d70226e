"""Staleness: reason codes on real workspaces, early cutoff, and the pure decision functions."""

from __future__ import annotations

import random

import pytest
from conftest import ECHO_PIPELINE, LOG_HELPER, MakeWorkspace, Workspace

from eventrunner.core.records import Failure, Manifest
from eventrunner.core.staleness import Facts, RetryRule, after_failure, backoff_delay, decide

CUTOFF_HANDLERS = (
    LOG_HELPER
    + """

def shout(ctx, text: str) -> str:
    _log("shout", ctx.entity_id)
    return " ".join(text.split()).upper() + ctx.params["suffix"] + "\\n"


def count(ctx, text: str) -> dict:
    _log("count", ctx.entity_id)
    return {"words": len(text.split())}


def summary(ctx, counts: dict[str, dict]) -> str:
    _log("summary", ctx.entity_id)
    return "".join(f"{k}={v['words']}\\n" for k, v in sorted(counts.items()))
"""
)


@pytest.fixture
def logged(make_workspace: MakeWorkspace) -> Workspace:
    ws = make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": CUTOFF_HANDLERS,
            "inbox/a.txt": "hello world\n",
            "inbox/b.txt": "one two three\n",
        }
    )
    ws.run()
    ws.runs()
    return ws


def test_upstream_rerun_with_identical_output_leaves_downstream_fresh(logged: Workspace) -> None:
    # Given an up-to-date chain
    # When an input changes only in whitespace that the upstream handler normalises away
    logged.write("inbox/a.txt", "  hello    world  \n\n")
    assert logged.reasons("a", "shout") == {"INPUT_CHANGED"}
    report = logged.run()

    # Then the upstream re-ran, produced the same bytes, and nothing downstream executed
    assert report["executed"] == 1
    assert logged.runs() == ["shout a"]
    assert set(logged.states().values()) == {"fresh"}


def test_input_changed_reason_names_the_input_and_its_hashes(logged: Workspace) -> None:
    logged.write("inbox/b.txt", "four five\n")

    row = logged.explain("b", "shout")

    assert row["state"] == "stale"
    [reason] = row["reasons"]
    assert reason["code"] == "INPUT_CHANGED"
    detail = reason["detail"]
    assert detail["input"] == "text"
    assert detail["path"] == "inbox/b.txt"
    assert detail["old"] == row["manifest"]["inputs"]["text"]["inbox/b.txt"]
    assert detail["new"] != detail["old"]


def test_downstream_of_a_stale_state_is_waiting_with_upstream_not_fresh(logged: Workspace) -> None:
    logged.write("inbox/b.txt", "four five\n")

    row = logged.explain("b", "count")

    assert row["state"] == "waiting"
    assert {r["code"] for r in row["reasons"]} == {"UPSTREAM_NOT_FRESH"}


def test_output_edited_by_hand_is_output_modified_and_rerun_restores_it(logged: Workspace) -> None:
    # Given a fresh output
    # When someone edits it by hand
    logged.write("shouted/a.txt", "HAND EDIT\n")

    # Then explain says OUTPUT_MODIFIED and a run restores it
    assert logged.reasons("a", "shout") == {"OUTPUT_MODIFIED"}
    logged.run()
    assert logged.read("shouted/a.txt") == "HELLO WORLD!\n"
    assert logged.runs() == ["shout a"]


def test_deleted_output_is_missing_and_rerun_recreates_it(logged: Workspace) -> None:
    logged.delete("counts/b.json")

    assert logged.reasons("b", "count") == {"MISSING"}
    logged.run()
    assert logged.runs() == ["count b"]
    assert logged.exists("counts/b.json")


def test_deleted_source_input_leaves_its_dependents_orphaned(logged: Workspace) -> None:
    # When a source file disappears
    logged.delete("inbox/a.txt")

    # Then its states are orphaned (outputs kept), the fan-in is stale by INPUT_REMOVED
    states = logged.states()
    assert states[("echo.shout", "a")] == "orphaned"
    assert states[("echo.count", "a")] == "orphaned"
    assert states[("echo.shout", "b")] == "fresh"
    assert logged.exists("shouted/a.txt")
    counts = logged.cli("status", "--json").json["pipelines"]["echo"]["stages"]
    assert counts["shout"]["orphaned"] == 1
    assert counts["count"]["orphaned"] == 1
    assert "INPUT_REMOVED" in logged.reasons("_", "summary")

    # And a run keeps the orphaned outputs (only prune deletes)
    logged.run()
    assert logged.exists("shouted/a.txt")
    assert logged.read("summary.md") == "b=3\n"


# -- pure decisions -------------------------------------------------------------------------


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = {
        "stage": "p.s",
        "entity": "a",
        "values": {"n": "a"},
        "code": "c1",
        "params": "p1",
        "inputs": {"t": {"in/a.txt": "h1"}},
        "outputs": {"out/a.txt": "o1"},
        "started": 1.0,
        "finished_ns": 1_000,
        "duration_s": 0.1,
    }
    base.update(kw)
    return Manifest(**base)


def _facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "manifest": _manifest(),
        "code": "c1",
        "params": "p1",
        "inputs": {"t": {"in/a.txt": "h1"}},
        "missing_inputs": [],
        "upstream_not_fresh": [],
        "outputs_now": {"out/a.txt": "o1"},
        "failure": None,
        "attempt_key": "k",
        "now": 100.0,
    }
    base.update(kw)
    return Facts(**base)


def _failure(**kw: object) -> Failure:
    base: dict[str, object] = {
        "stage": "p.s",
        "entity": "a",
        "key": "k",
        "attempts": 1,
        "error": "E: x",
        "traceback": "",
        "first_failed": 50.0,
        "last_failed": 50.0,
        "next_retry": 200.0,
    }
    base.update(kw)
    return Failure(**base)


def codes(f: Facts) -> tuple[str, set[str]]:
    v = decide(f)
    return v.state, {r.code for r in v.reasons}


def test_matching_manifest_is_fresh() -> None:
    assert codes(_facts()) == ("fresh", set())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"manifest": None}, "MISSING"),
        ({"outputs_now": {"out/a.txt": None}}, "MISSING"),
        ({"code": "c2"}, "CODE_CHANGED"),
        ({"params": "p2"}, "PARAMS_CHANGED"),
        ({"inputs": {"t": {"in/a.txt": "h2"}}}, "INPUT_CHANGED"),
        ({"inputs": {"t": {"in/a.txt": "h1", "in/b.txt": "h3"}}}, "INPUT_ADDED"),
        ({"inputs": {"t": {}}}, "INPUT_REMOVED"),
        ({"outputs_now": {"out/a.txt": "o2"}}, "OUTPUT_MODIFIED"),
        ({"invalidated_ns": 2_000}, "INVALIDATED"),
    ],
)
def test_each_difference_makes_the_state_stale_with_its_reason(
    change: dict[str, object], expected: str
) -> None:
    state, reasons = codes(_facts(**change))
    assert state == "stale"
    assert reasons == {expected}


def test_invalidation_older_than_the_manifest_is_ignored() -> None:
    assert codes(_facts(invalidated_ns=500)) == ("fresh", set())


def test_precedence_running_orphaned_held_waiting() -> None:
    stale = {"code": "c2"}
    assert decide(_facts(running=True, **stale)).state == "running"
    assert decide(_facts(exists=False, **stale)).state == "orphaned"
    assert codes(_facts(held=True, **stale))[0] == "held"
    assert "HELD" in codes(_facts(held=True))[1]
    assert codes(_facts(missing_inputs=["in/a.txt"], **stale)) == (
        "waiting",
        {"UPSTREAM_NOT_FRESH"},
    )
    assert codes(_facts(upstream_not_fresh=["p.up a (stale)"])) == (
        "waiting",
        {"UPSTREAM_NOT_FRESH"},
    )


def test_failure_with_same_attempt_key_backs_off_then_is_failed_and_runnable_when_due() -> None:
    stale = {"code": "c2"}
    waiting = decide(_facts(failure=_failure(), **stale))
    assert (waiting.state, waiting.runnable) == ("failed", False)
    assert "BACKOFF" in codes(_facts(failure=_failure(), **stale))[1]
    # Due: still shown as failed with its retry time (never "stale / never produced"), and run.
    due = decide(_facts(failure=_failure(next_retry=50.0), **stale))
    assert (due.state, due.runnable, due.retry_due) == ("failed", True, True)
    assert due.reasons[0].code == "BACKOFF" and "retry due since" in due.reasons[0].message
    assert due.reasons[0].detail["retry_at"] == 50.0


def test_dead_failure_is_dead_until_the_attempt_key_changes() -> None:
    dead = _failure(dead=True, next_retry=None, attempts=3)
    assert codes(_facts(failure=dead, code="c2")) == ("dead", {"DEAD", "CODE_CHANGED"})
    assert codes(_facts(failure=dead, code="c2", attempt_key="other"))[0] == "stale"


def test_backoff_delay_is_full_jitter_within_the_exponential_cap() -> None:
    policy = RetryRule(max_attempts=10, backoff=10, max_backoff=60)
    rng = random.Random(7)
    for attempts, cap in ((1, 10), (2, 20), (3, 40), (4, 60), (9, 60)):
        delays = [backoff_delay(policy, attempts, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # uniform over the whole range, not a fixed delay


def test_after_failure_counts_attempts_per_key_and_goes_dead_at_max() -> None:
    policy = RetryRule(max_attempts=3, backoff=1, max_backoff=1)
    kw = {"stage": "p.s", "entity": "a", "error": "E", "traceback": ""}
    f1 = after_failure(policy, None, key="k", now=10.0, **kw)
    f2 = after_failure(policy, f1, key="k", now=11.0, **kw)
    f3 = after_failure(policy, f2, key="k", now=12.0, **kw)
    other = after_failure(policy, f2, key="k2", now=12.0, **kw)
    permanent = after_failure(policy, None, key="k", now=10.0, permanent=True, **kw)

    assert (f1.attempts, f1.dead) == (1, False)
    assert f1.next_retry is not None and 10.0 <= f1.next_retry <= 11.0
    assert (f2.attempts, f2.first_failed) == (2, 10.0)
    assert (f3.attempts, f3.dead, f3.next_retry) == (3, True, None)
    assert (other.attempts, other.dead) == (1, False)
    assert (permanent.attempts, permanent.dead) == (1, True)
