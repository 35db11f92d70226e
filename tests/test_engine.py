"""`eventrunner run` end to end on real workspaces: what runs, what stays fresh, what fails."""

from __future__ import annotations

import json

import pytest
from conftest import (
    ECHO_HANDLERS,
    ECHO_PIPELINE,
    LOG_HELPER,
    LOGGED_ECHO_HANDLERS,
    MakeWorkspace,
    Workspace,
)

SHAPES_PIPELINE = """\
name = "p"

[stages.upper]
handler = "h:upper"
inputs  = { text = "inbox/{name}.txt" }
output  = "up/{name}.txt"

[stages.length]
handler = "h:length"
inputs  = { text = "up/{name}.txt" }
output  = "len/{name}.txt"

[stages.joined]
handler = "h:joined"
inputs  = { texts = "up/{name}.txt" }
output  = "all.txt"

[stages.split]
handler = "h:split"
inputs  = { feed = "feeds/{feed}.txt" }
output  = "items/{feed}/{item}.txt"

[stages.measure]
handler = "h:measure"
inputs  = { item = "items/{feed}/{item}.txt" }
output  = "sizes/{feed}/{item}.txt"

[stages.gen]
handler = "h:gen"
output  = "generated.txt"
params  = { greeting = "hi" }
"""

SHAPES_HANDLERS = (
    LOG_HELPER
    + """

def upper(ctx, text: str) -> str:
    _log("upper", ctx.entity_id)
    return text.strip().upper() + "\\n"


def length(ctx, text: str) -> str:
    _log("length", ctx.entity_id)
    return f"{len(text.strip())}\\n"


def joined(ctx, texts: dict[str, str]) -> str:
    _log("joined", ctx.entity_id)
    return "".join(f"{k}:{v}" for k, v in sorted(texts.items()))


def split(ctx, feed: str) -> dict:
    _log("split", ctx.entity_id)
    pairs = (line.partition("=") for line in feed.splitlines() if line)
    return {key: value + "\\n" for key, _, value in pairs}


def measure(ctx, item: str) -> str:
    _log("measure", ctx.entity_id)
    return f"{len(item)}\\n"


def gen(ctx) -> str:
    _log("gen", ctx.entity_id)
    return ctx.params["greeting"] + "\\n"
"""
)


@pytest.fixture
def shapes(make_workspace: MakeWorkspace) -> Workspace:
    """Map, chain, fan-in, fan-out (+ its downstream) and a generator."""
    return make_workspace(
        {
            "pipelines/p.toml": SHAPES_PIPELINE,
            "handlers/h.py": SHAPES_HANDLERS,
            "inbox/a.txt": "hello\n",
            "inbox/b.txt": "good bye\n",
            "feeds/f.txt": "x=first\ny=second\n",
        }
    )


# -- 1. run on a fresh workspace ------------------------------------------------------------


def test_first_run_reports_counts_and_runs_every_stage_shape(shapes: Workspace) -> None:
    report = shapes.run()

    assert {"executed", "succeeded", "failed", "skipped", "duration_s"} <= set(report)
    # upper 2 + length 2 + joined 1 + split 1 + measure 2 + gen 1
    assert report["executed"] == 9
    assert report["succeeded"] == 9
    assert report["failed"] == 0
    assert report["skipped"] == 0
    assert isinstance(report["duration_s"], int | float) and report["duration_s"] >= 0


def test_first_run_writes_correct_outputs_for_every_stage_shape(shapes: Workspace) -> None:
    shapes.run()

    assert shapes.read("up/a.txt") == "HELLO\n"  # map
    assert shapes.read("len/b.txt") == "8\n"  # chain
    assert shapes.read("all.txt") == "a:HELLO\nb:GOOD BYE\n"  # fan-in
    assert shapes.read("items/f/x.txt") == "first\n"  # fan-out
    assert shapes.read("items/f/y.txt") == "second\n"
    assert shapes.read("sizes/f/y.txt") == "7\n"  # downstream of fan-out
    assert shapes.read("generated.txt") == "hi\n"  # generator


def test_second_run_executes_nothing(shapes: Workspace) -> None:
    # Given a workspace brought up to date
    shapes.run()
    shapes.runs()

    # When it runs again without changes
    report = shapes.run()

    # Then nothing executes and every state is fresh
    assert report["executed"] == 0
    assert shapes.runs() == []
    assert set(shapes.states().values()) == {"fresh"}


def test_new_source_file_runs_only_its_entity_and_the_fan_in(shapes: Workspace) -> None:
    # Given an up-to-date workspace
    shapes.run()
    shapes.runs()

    # When a new source file arrives
    shapes.write("inbox/c.txt", "sea\n")
    shapes.run()

    # Then its map chain and the fan-in run, nothing else
    assert sorted(shapes.runs()) == ["joined _", "length c", "upper c"]
    assert shapes.read("all.txt") == "a:HELLO\nb:GOOD BYE\nc:SEA\n"


# -- 2. code identity -------------------------------------------------------------------------

CODE_PIPELINE = """\
name = "code"

[stages.shout]
handler = "h:shout"
inputs  = { text = "inbox/{name}.txt" }
output  = "shout/{name}.txt"
params  = { suffix = "!" }

[stages.plain]
handler = "h:plain"
inputs  = { text = "inbox/{name}.txt" }
output  = "plain/{name}.txt"

[stages.tidy]
handler = "h:tidied"
inputs  = { text = "inbox/{name}.txt" }
output  = "tidy/{name}.txt"

[stages.count]
handler = "h:count"
inputs  = { text = "shout/{name}.txt" }
output  = "count/{name}.txt"
"""

CODE_HANDLERS = (
    LOG_HELPER
    + """
from .util import tidy


def _fmt(text):
    return text.strip().upper()


def shout(ctx, text: str) -> str:
    _log("shout", ctx.entity_id)
    return _fmt(text) + ctx.params["suffix"] + "\\n"


def plain(ctx, text: str) -> str:
    _log("plain", ctx.entity_id)
    return _fmt(text) + "\\n"


def tidied(ctx, text: str) -> str:
    _log("tidy", ctx.entity_id)
    return tidy(text)


def count(ctx, text: str) -> str:
    _log("count", ctx.entity_id)
    return f"{len(text.split())}\\n"
"""
)

UTIL = """\
def tidy(text):
    return " ".join(text.split()) + "\\n"
"""


@pytest.fixture
def code(make_workspace: MakeWorkspace) -> Workspace:
    ws = make_workspace(
        {
            "pipelines/code.toml": CODE_PIPELINE,
            "handlers/h.py": CODE_HANDLERS,
            "handlers/util.py": UTIL,
            "inbox/a.txt": "hello   world\n",
            "inbox/b.txt": "good bye\n",
        }
    )
    ws.run()
    ws.runs()
    return ws


def test_comment_docstring_and_formatting_edits_rerun_nothing(code: Workspace) -> None:
    # Given an up-to-date workspace
    # When the handler module gets comments, docstrings and a different layout
    edited = CODE_HANDLERS.replace(
        "def _fmt(text):\n    return text.strip().upper()",
        '# a comment\ndef _fmt(text):\n    """Docstring."""\n    return (\n        text.strip()  # why\n        .upper()\n    )',
    ).replace(
        "def shout(ctx, text: str) -> str:\n",
        'def shout(ctx,   text : str)->str:\n    """Shout it."""\n\n',
    )
    assert edited != CODE_HANDLERS
    code.write("handlers/h.py", edited)
    code.write("handlers/util.py", "# helpers\n\n" + UTIL.replace("return", "return  "))

    # Then nothing re-runs
    assert code.run()["executed"] == 0
    assert code.runs() == []


def test_handler_body_edit_reruns_that_stage_and_downstream_only_where_output_changed(
    code: Workspace,
) -> None:
    # When shout's body changes in a way that alters only entity a's output
    code.write(
        "handlers/h.py",
        CODE_HANDLERS.replace(
            'return _fmt(text) + ctx.params["suffix"] + "\\n"',
            'return _fmt(text).replace("HELLO", "HI") + ctx.params["suffix"] + "\\n"',
        ),
    )
    assert "CODE_CHANGED" in code.reasons("a", "shout")
    code.run()

    # Then shout re-runs for every entity, count only for a (b's shout output is identical)
    assert sorted(code.runs()) == ["count a", "shout a", "shout b"]
    assert code.read("shout/a.txt") == "HI   WORLD!\n"


def test_helper_function_edit_reruns_exactly_the_stages_that_use_it(code: Workspace) -> None:
    # When the same-module helper _fmt changes (same result, different code)
    code.write(
        "handlers/h.py",
        CODE_HANDLERS.replace("return text.strip().upper()", "return str.upper(text.strip())"),
    )
    code.run()

    # Then shout and plain re-run; tidy (does not use it) and count (same input bytes) do not
    assert sorted(code.runs()) == ["plain a", "plain b", "shout a", "shout b"]


def test_relative_helper_module_edit_reruns_exactly_the_stages_that_import_it(
    code: Workspace,
) -> None:
    # When handlers/util.py (imported as `from .util import tidy`) changes
    code.write("handlers/util.py", UTIL.replace('" ".join', '"__".join'))
    code.run()

    # Then only the tidy stage re-runs
    assert sorted(code.runs()) == ["tidy a", "tidy b"]


def test_relative_helper_module_edit_runs_the_new_helper_in_process(code: Workspace) -> None:
    # When the helper module changes its result
    code.write("handlers/util.py", UTIL.replace('" ".join', '"__".join'))
    code.run()

    # Then the output reflects the new helper
    assert code.read("tidy/a.txt") == "hello__world\n"


def test_relative_helper_module_edit_runs_the_new_helper_in_a_fresh_process(
    code: Workspace,
) -> None:
    code.write("handlers/util.py", UTIL.replace('" ".join', '"__".join'))

    res = code.sub("run", "--json")

    assert res.code == 0, res.err
    assert res.json["executed"] == 2
    assert code.read("tidy/a.txt") == "hello__world\n"


def test_params_change_reruns_the_stage_with_params_changed(code: Workspace) -> None:
    # When the stage's params change
    code.write("pipelines/code.toml", CODE_PIPELINE.replace('suffix = "!"', 'suffix = "?"'))

    # Then explain says PARAMS_CHANGED and the next run re-runs that stage (count: new input)
    assert code.reasons("a", "shout") == {"PARAMS_CHANGED"}
    code.run()
    assert sorted(code.runs()) == ["count a", "count b", "shout a", "shout b"]
    assert code.read("shout/b.txt") == "GOOD BYE?\n"


def test_version_change_reruns_the_stage(code: Workspace) -> None:
    # When only the stage's version changes
    code.write(
        "pipelines/code.toml",
        CODE_PIPELINE.replace(
            'output  = "plain/{name}.txt"', 'output  = "plain/{name}.txt"\nversion = "2"'
        ),
    )

    # Then plain is stale by CODE_CHANGED and re-runs; nothing else does
    assert code.reasons("a", "plain") == {"CODE_CHANGED"}
    code.run()
    assert sorted(code.runs()) == ["plain a", "plain b"]


# -- 4. fan-in ---------------------------------------------------------------------------------

FANIN_PIPELINE = """\
name = "fanin"

[stages.index]
handler = "h:index"
inputs  = { notes = "inbox/{name}.txt" }
output  = "index.txt"

[stages.all_keys]
handler = "h:keys"
inputs  = { items = "data/{src}/{item}.txt" }
output  = "keys.json"

[stages.per_source]
handler = "h:keys"
inputs  = { items = "data/{src}/{item}.txt" }
output  = "by-source/{src}.json"
"""

FANIN_HANDLERS = """\
def index(notes: dict[str, str]) -> str:
    return "".join(f"{k}={v}" for k, v in sorted(notes.items()))


def keys(items: dict[str, str]) -> list:
    return sorted(items)
"""


@pytest.fixture
def fanin(make_workspace: MakeWorkspace) -> Workspace:
    return make_workspace(
        {
            "pipelines/fanin.toml": FANIN_PIPELINE,
            "handlers/h.py": FANIN_HANDLERS,
            "inbox/a.txt": "A\n",
            "inbox/b.txt": "B\n",
            "data/x/1.txt": "x1",
            "data/x/2.txt": "x2",
            "data/y/1.txt": "y1",
        }
    )


def test_fan_in_handler_receives_inputs_keyed_by_entity_id(fanin: Workspace) -> None:
    fanin.run()

    assert fanin.read("index.txt") == "a=A\nb=B\n"
    assert json.loads(fanin.read("keys.json")) == ["src=x,item=1", "src=x,item=2", "src=y,item=1"]
    # Partly aggregated: the shared variable is the entity, the rest keys the dict
    assert json.loads(fanin.read("by-source/x.json")) == ["1", "2"]
    assert json.loads(fanin.read("by-source/y.json")) == ["1"]


def test_fan_in_reports_added_and_removed_inputs_and_reruns(fanin: Workspace) -> None:
    # Given an up-to-date fan-in
    fanin.run()

    # When one input is added and another removed
    fanin.write("inbox/c.txt", "C\n")
    fanin.delete("inbox/a.txt")

    # Then explain names both changes
    row = fanin.explain("_", "index")
    assert row["state"] == "stale"
    by_code = {r["code"]: r for r in row["reasons"]}
    assert set(by_code) == {"INPUT_ADDED", "INPUT_REMOVED"}
    assert by_code["INPUT_ADDED"]["detail"]["path"] == "inbox/c.txt"
    assert by_code["INPUT_REMOVED"]["detail"]["path"] == "inbox/a.txt"

    # And the re-run output reflects the change
    assert fanin.run()["executed"] == 1
    assert fanin.read("index.txt") == "b=B\nc=C\n"


# -- 5. fan-out and prune ------------------------------------------------------------------------


def test_fan_out_dropping_a_key_orphans_its_downstream_and_prune_deletes_exactly_that(
    shapes: Workspace,
) -> None:
    # Given a fan-out feed with items x and y, all fresh
    shapes.run()
    shapes.runs()

    # When the feed no longer has item x
    shapes.write("feeds/f.txt", "y=second\n")
    shapes.run()

    # Then split re-ran, y's downstream stayed fresh, x's downstream is orphaned
    assert shapes.runs() == ["split f"]
    states = shapes.states()
    assert states[("p.measure", "feed=f,item=x")] == "orphaned"
    assert states[("p.measure", "feed=f,item=y")] == "fresh"
    assert shapes.exists("items/f/x.txt") and shapes.exists("sizes/f/x.txt")
    before = sorted(
        p.relative_to(shapes.root).as_posix() for p in shapes.root.rglob("*") if p.is_file()
    )

    # When prune runs dry
    dry = shapes.cli("prune", "--dry-run", "--json")

    # Then it lists the dropped outputs and deletes nothing
    assert dry.code == 0
    listed = sorted(o for p in dry.json["pruned"] for o in p["outputs"])
    assert listed == ["items/f/x.txt", "sizes/f/x.txt"]
    assert (
        sorted(p.relative_to(shapes.root).as_posix() for p in shapes.root.rglob("*") if p.is_file())
        == before
    )

    # When prune runs for real
    assert shapes.cli("prune", "--json").code == 0

    # Then exactly the dropped item and its downstream output are gone
    assert not shapes.exists("items/f/x.txt")
    assert not shapes.exists("sizes/f/x.txt")
    for live in (
        "items/f/y.txt",
        "sizes/f/y.txt",
        "up/a.txt",
        "all.txt",
        "generated.txt",
        "feeds/f.txt",
    ):
        assert shapes.exists(live), live
    assert "orphaned" not in shapes.states().values()
    assert shapes.run()["executed"] == 0


def test_fan_out_adding_a_key_runs_only_the_new_items_downstream(shapes: Workspace) -> None:
    shapes.run()
    shapes.runs()

    shapes.write("feeds/f.txt", "x=first\ny=second\nz=third\n")
    shapes.run()

    assert sorted(shapes.runs()) == ["measure feed=f,item=z", "split f"]
    assert shapes.read("sizes/f/z.txt") == "6\n"


def test_fan_out_key_dropped_then_restored_is_fresh_again(shapes: Workspace) -> None:
    shapes.run()
    shapes.write("feeds/f.txt", "y=second\n")
    shapes.run()
    shapes.runs()

    shapes.write("feeds/f.txt", "x=first\ny=second\n")
    shapes.run()

    # The restored item has the same content: its downstream manifest still matches
    assert shapes.runs() == ["split f"]
    assert set(shapes.states().values()) == {"fresh"}
    assert shapes.cli("prune", "--dry-run", "--json").json["pruned"] == []


def test_deleting_a_fan_out_input_orphans_the_items_downstream(shapes: Workspace) -> None:
    shapes.run()

    shapes.delete("feeds/f.txt")

    states = shapes.states()
    assert states[("p.split", "f")] == "orphaned"
    assert states[("p.measure", "feed=f,item=x")] == "orphaned"


def test_one_prune_removes_a_deleted_fan_out_input_and_everything_below_it(
    shapes: Workspace,
) -> None:
    # Given a fan-out whose input is deleted
    shapes.run()
    shapes.delete("feeds/f.txt")

    # When pruning once
    assert shapes.cli("prune").code == 0

    # Then its items and their downstream outputs are all gone
    for gone in ("items/f/x.txt", "items/f/y.txt", "sizes/f/x.txt", "sizes/f/y.txt"):
        assert not shapes.exists(gone), gone


# -- 6. hold, release, invalidate --------------------------------------------------------------


def test_held_state_is_not_run_and_counts_as_skipped_until_released(echo: Workspace) -> None:
    # Given a hold on the fan-in stage before the first run
    assert echo.cli("hold", "summary").code == 0

    # When running
    report = echo.run()

    # Then the held state did not run, is counted skipped and shows as held
    assert report["executed"] == 4
    assert report["skipped"] == 1
    assert not echo.exists("summary.md")
    assert echo.cli("status", "--json").json["pipelines"]["echo"]["stages"]["summary"]["held"] == 1
    assert "HELD" in echo.reasons("_", "summary")

    # When released and run again
    assert echo.cli("release", "summary").code == 0
    report = echo.run()

    # Then it runs
    assert report["executed"] == 1
    assert echo.read("summary.md") == "a=2\nb=3\n"


def test_hold_of_one_entity_leaves_the_others_running(echo: Workspace) -> None:
    assert echo.cli("hold", "shout", "a").code == 0

    echo.run()

    states = echo.states()
    assert states[("echo.shout", "a")] == "held"
    assert states[("echo.shout", "b")] == "fresh"
    assert states[("echo.count", "b")] == "fresh"
    assert not echo.exists("shouted/a.txt")


def test_invalidate_reruns_that_state_but_not_downstream_when_output_is_unchanged(
    make_workspace: MakeWorkspace,
) -> None:
    ws = _logged_echo(make_workspace)
    ws.run()
    ws.runs()

    # When one state is invalidated
    assert ws.cli("invalidate", "shout", "a").code == 0

    # Then explain says INVALIDATED and only that state re-runs (same output: no downstream)
    assert ws.reasons("a", "shout") == {"INVALIDATED"}
    ws.run()
    assert ws.runs() == ["shout a"]


def test_invalidate_downstream_reruns_the_downstream_stages_too(
    make_workspace: MakeWorkspace,
) -> None:
    ws = _logged_echo(make_workspace)
    ws.run()
    ws.runs()

    assert ws.cli("invalidate", "shout", "a", "--downstream").code == 0
    ws.run()

    ran = set(ws.runs())
    assert {"shout a", "count a", "summary _"} <= ran
    assert "shout b" not in ran


def test_invalidate_unknown_entity_exits_2(echo: Workspace) -> None:
    res = echo.cli("invalidate", "shout", "nope")
    assert res.code == 2
    assert "nope" in res.err


def _logged_echo(make_workspace: MakeWorkspace) -> Workspace:
    return make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": LOGGED_ECHO_HANDLERS,
            "inbox/a.txt": "hello world\n",
            "inbox/b.txt": "one two three\n",
        }
    )


# -- 7. failures, backoff, dead ----------------------------------------------------------------

FAIL_PIPELINE = """\
name = "f"

[stages.work]
handler = "h:work"
inputs  = {{ text = "inbox/{{name}}.txt" }}
output  = "out/{{name}}.txt"
{retry}
"""

FAIL_HANDLERS = """\
from eventrunner import PermanentError


def work(ctx, text: str) -> str:
    if text.startswith("boom"):
        raise ValueError("boom for " + ctx.entity_id)
    if text.startswith("perm"):
        raise PermanentError("cannot ever parse " + ctx.entity_id)
    return text.upper()
"""


def _failing(make_workspace: MakeWorkspace, retry: str, **inbox: str) -> Workspace:
    files = {
        "pipelines/f.toml": FAIL_PIPELINE.format(retry=retry),
        "handlers/h.py": FAIL_HANDLERS,
    }
    files.update({f"inbox/{k}.txt": v for k, v in inbox.items()})
    return make_workspace(files)


def test_raising_handler_fails_only_its_own_state_and_exits_1(
    make_workspace: MakeWorkspace,
) -> None:
    ws = _failing(make_workspace, "", ok1="fine", bad="boom", ok2="also fine")

    report = ws.run(expect=1)

    assert report["executed"] == 3
    assert report["succeeded"] == 2
    assert report["failed"] == 1
    assert ws.read("out/ok1.txt") == "FINE"
    assert ws.read("out/ok2.txt") == "ALSO FINE"
    assert not ws.exists("out/bad.txt")
    states = ws.states()
    assert states[("f.work", "bad")] == "failed"
    assert states[("f.work", "ok1")] == "fresh"


def test_failure_error_and_traceback_are_recorded_for_explain(
    make_workspace: MakeWorkspace,
) -> None:
    ws = _failing(make_workspace, "", bad="boom")
    ws.run(expect=1)

    row = ws.explain("bad", "work")

    assert "ValueError: boom for bad" in row["failure"]["error"]
    assert "Traceback" in row["failure"]["traceback"]
    assert 'raise ValueError("boom for " + ctx.entity_id)' in row["failure"]["traceback"]
    text = ws.cli("explain", "bad", "--stage", "work")
    assert "boom for bad" in text.out


def test_failed_state_backs_off_and_the_next_run_does_not_rerun_it(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a failure with a one-hour backoff
    ws = _failing(make_workspace, 'retry = { max_attempts = 2, backoff = "1h" }', bad="boom")
    ws.run(expect=1)

    # Then the state is failed with BACKOFF
    row = ws.explain("bad", "work")
    assert row["state"] == "failed"
    assert "BACKOFF" in {r["code"] for r in row["reasons"]}

    # When running again, it is not re-run and counts as skipped
    report = ws.run(expect=None)
    assert report["executed"] == 0
    assert report["skipped"] == 1


def test_retry_clears_backoff_and_the_next_run_reruns(make_workspace: MakeWorkspace) -> None:
    ws = _failing(make_workspace, 'retry = { max_attempts = 2, backoff = "1h" }', bad="boom")
    ws.run(expect=1)

    # When the user retries that state
    assert ws.cli("retry", "work", "bad").code == 0

    # Then it is stale again and the next run runs it
    assert ws.states()[("f.work", "bad")] == "stale"
    assert ws.run(expect=1)["executed"] == 1


def test_reaching_max_attempts_makes_the_state_dead(make_workspace: MakeWorkspace) -> None:
    # Given two attempts allowed and no backoff delay
    ws = _failing(make_workspace, 'retry = { max_attempts = 2, backoff = "0s" }', bad="boom")

    # When two runs fail
    ws.run(expect=1)
    ws.run(expect=1)

    # Then the state is dead (DEAD) and a further run leaves it alone
    row = ws.explain("bad", "work")
    assert row["state"] == "dead"
    assert "DEAD" in {r["code"] for r in row["reasons"]}
    assert row["failure"]["attempts"] == 2
    assert ws.run(expect=None)["executed"] == 0
    assert ws.cli("entities", "--state", "dead", "--json").json["entities"][0]["entity"] == "bad"

    # When retried by hand, it runs again
    assert ws.cli("retry").code == 0
    assert ws.run(expect=1)["executed"] == 1


def test_permanent_error_makes_the_state_dead_at_once(make_workspace: MakeWorkspace) -> None:
    ws = _failing(make_workspace, "", bad="perm")

    ws.run(expect=1)

    row = ws.explain("bad", "work")
    assert row["state"] == "dead"
    assert row["failure"]["attempts"] == 1
    assert "cannot ever parse bad" in row["failure"]["error"]


def test_fixing_the_handler_code_makes_a_dead_state_run_again(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a dead state
    ws = _failing(make_workspace, "", bad="perm")
    ws.run(expect=1)
    assert ws.states()[("f.work", "bad")] == "dead"

    # When the handler is fixed (new code identity)
    ws.write(
        "handlers/h.py", FAIL_HANDLERS.replace('if text.startswith("perm"):', 'if text == "never":')
    )

    # Then the state is stale and the next run succeeds
    assert ws.states()[("f.work", "bad")] == "stale"
    assert ws.run()["succeeded"] == 1
    assert ws.read("out/bad.txt") == "PERM"
    assert ws.states()[("f.work", "bad")] == "fresh"


def test_changing_the_input_of_a_dead_state_starts_afresh(make_workspace: MakeWorkspace) -> None:
    ws = _failing(make_workspace, "", bad="perm")
    ws.run(expect=1)

    ws.write("inbox/bad.txt", "repaired")

    assert ws.run()["succeeded"] == 1
    assert ws.read("out/bad.txt") == "REPAIRED"


def test_failed_upstream_leaves_downstream_waiting(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": ECHO_HANDLERS.replace(
                "def shout(ctx, text: str) -> str:\n",
                'def shout(ctx, text: str) -> str:\n    if "bad" in text:\n        raise RuntimeError("no")\n',
            ),
            "inbox/a.txt": "good\n",
            "inbox/b.txt": "bad\n",
        }
    )

    ws.run(expect=1)

    states = ws.states()
    assert states[("echo.shout", "b")] == "failed"
    assert states[("echo.count", "b")] == "waiting"
    assert states[("echo.count", "a")] == "fresh"
    assert states[("echo.summary", "_")] == "waiting"
    assert "UPSTREAM_NOT_FRESH" in ws.reasons("b", "count")


# -- 8. scheduling: -j and priority ------------------------------------------------------------


def test_one_and_four_jobs_produce_the_same_results(make_workspace: MakeWorkspace) -> None:
    def build() -> Workspace:
        files = {
            "pipelines/p.toml": SHAPES_PIPELINE,
            "handlers/h.py": SHAPES_HANDLERS,
            "feeds/f.txt": "k=v\nq=w\n",
        }
        files.update({f"inbox/e{i}.txt": f"entity {i} " * i + "\n" for i in range(12)})
        return make_workspace(files)

    one, four = build(), build()

    r1, r4 = one.run("-j", "1"), four.run("-j", "4")

    assert r1["executed"] == r4["executed"] == r1["succeeded"]

    def outputs(ws: Workspace) -> dict[str, bytes]:
        return {
            p.relative_to(ws.root).as_posix(): p.read_bytes()
            for p in ws.root.rglob("*")
            if p.is_file()
            and not {".eventrunner", "handlers"} & set(p.parts)
            and p.name != "runs.log"
        }

    assert outputs(one) == outputs(four)
    assert one.states() == four.states()


def test_higher_priority_ready_work_runs_first_with_one_job(make_workspace: MakeWorkspace) -> None:
    pipeline = """\
    name = "prio"

    [stages.low]
    handler = "h:low"
    inputs  = { text = "inbox/{name}.txt" }
    output  = "low/{name}.txt"

    [stages.high]
    handler = "h:high"
    inputs  = { text = "inbox/{name}.txt" }
    output  = "high/{name}.txt"
    priority = 10
    """
    handlers = (
        LOG_HELPER
        + """

def low(ctx, text: str) -> str:
    _log("low", ctx.entity_id)
    return text


def high(ctx, text: str) -> str:
    _log("high", ctx.entity_id)
    return text
"""
    )
    files = {"pipelines/prio.toml": pipeline, "handlers/h.py": handlers}
    files.update({f"inbox/{n}.txt": n for n in "abcd"})
    ws = make_workspace(files)

    ws.run("-j", "1")

    order = [line.split()[0] for line in ws.runs()]
    assert order == ["high"] * 4 + ["low"] * 4


def test_run_selection_by_stage_and_entity(echo: Workspace) -> None:
    report = echo.run("--stage", "shout", "--entity", "a")

    assert report["executed"] == 1
    assert echo.exists("shouted/a.txt")
    assert not echo.exists("shouted/b.txt")


def test_dry_run_executes_nothing(echo: Workspace) -> None:
    res = echo.cli("run", "--dry-run", "--json")

    assert res.code == 0
    assert res.json["executed"] == 0
    assert {(w["stage"], w["entity"]) for w in res.json["would_run"]} == {
        ("echo.shout", "a"),
        ("echo.shout", "b"),
    }
    assert not echo.exists("shouted")


def _stale(ws: Workspace) -> set[tuple[str, str]]:
    return {k for k, state in ws.states().items() if state != "fresh"}


@pytest.mark.parametrize(
    ("stage", "entity", "expected"),
    [
        # a map's downstream: its own chain and the fan-in, not the other entity's chain
        ("upper", "a", {("p.upper", "a"), ("p.length", "a"), ("p.joined", "_")}),
        # a fan-out's downstream: exactly the items it produced
        (
            "split",
            "f",
            {("p.split", "f"), ("p.measure", "feed=f,item=x"), ("p.measure", "feed=f,item=y")},
        ),
    ],
)
def test_invalidate_downstream_marks_exactly_the_descendants(
    shapes: Workspace, stage: str, entity: str, expected: set[tuple[str, str]]
) -> None:
    # Given everything fresh
    shapes.run()
    assert _stale(shapes) == set()

    # When one state is invalidated with --downstream
    res = shapes.cli("invalidate", stage, entity, "--downstream", "--json")
    assert res.code == 0, res.err

    # Then exactly it and the states that read it (transitively) are stale, not whole stages
    assert _stale(shapes) == expected
    assert {(d["stage"], d["entity"]) for d in res.json["downstream"]} == expected - {
        (f"p.{stage}", entity)
    }
    # And a run re-runs just those
    assert shapes.run()["executed"] == len(expected)
