"""Silent no-ops are warned about by `validate`, `run` and `status`: a source folder that does
not exist, an input pattern that matches no file, files dropped where only a stage writes.
Through real subprocesses; the no-change run keeps answering from stats alone."""

from __future__ import annotations

from pathlib import Path

from conftest import ECHO_HANDLERS, ECHO_PIPELINE, MakeWorkspace, Workspace, age
from serve_helpers import serving

from eventrunner.core.patterns import parse_pattern
from eventrunner.run.noops import nothing_new, unproduced
from eventrunner.state import fastpath
from eventrunner.state.hashing import hash_file
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

NO_INBOX = (
    "eventrunner: warning: source inbox/{name}.txt (read by echo.shout (text)): its folder "
    "inbox/ does not exist, so nothing runs from it"
)


def warnings(res_err: str) -> list[str]:
    return [x for x in res_err.splitlines() if x.startswith("eventrunner: warning: ")]


def follow_changes(ws: Workspace) -> None:
    """Bring the workspace up to date and past the racy window: its next runs follow only
    what changed (a no-change run answers from stats)."""
    assert ws.sub("run").code == 0
    age(ws)
    assert ws.sub("run").code == 0
    assert ws.sub("run", "--json").json["mode"] == "stat"


def test_a_missing_source_folder_is_warned_by_validate_run_and_status(
    make_workspace: MakeWorkspace,
) -> None:
    # Given the echo pipeline with no inbox/ folder at all
    ws = make_workspace({"pipelines/echo.toml": ECHO_PIPELINE, "handlers/echo.py": ECHO_HANDLERS})
    expected = NO_INBOX
    # Then validate (exit 0: the workspace is valid), run and status all say so on stderr
    for args in (["validate"], ["run"], ["status"], ["status", "--json"]):
        res = ws.sub(*args)
        assert res.code == 0, (args, res.err)
        assert warnings(res.err) == [expected], args
    assert ws.sub("validate", "--json").json["warnings"] == [expected.split("warning: ", 1)[1]]
    assert "1 warning(s)" in ws.sub("validate").out


def test_a_typo_in_an_input_pattern_is_warned_as_matching_no_file(
    make_workspace: MakeWorkspace,
) -> None:
    # Given inbox files, and a stage whose input pattern has a typo in its extension
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "inbox/{n}.tx" }\n'
            'output = "out/{n}.txt"\n',
            "handlers/h.py": "def s(t: str) -> str:\n    return t\n",
            "inbox/a.txt": "x",
        }
    )
    res = ws.sub("run", "--json")

    assert res.code == 0 and res.json["executed"] == 0
    assert res.json["warnings"] == [
        "source inbox/{n}.tx (read by p.s (t)): no file matches it, so nothing runs from it"
    ]


def test_a_file_dropped_into_an_output_folder_is_warned_also_on_the_no_change_path(
    echo: Workspace,
) -> None:
    # Given an up-to-date workspace whose no-change run answers from stats
    assert echo.sub("run").code == 0
    age(echo)
    assert echo.sub("run").code == 0
    quiet = echo.sub("run", "--json")
    assert quiet.json["mode"] == "stat" and quiet.json["warnings"] == [] and not quiet.err

    # When a file is dropped into shout's output folder (as if it were an input)
    echo.write("shouted/c.txt", "dropped by hand\n")
    res = echo.sub("run", "--json")

    # Then the run warns, names the file, and runs nothing
    assert res.code == 0 and res.json["executed"] == 0
    [warning] = res.json["warnings"]
    assert warning.startswith(
        "1 file(s) match the output shouted/{name}.txt of stage echo.shout but no state "
        "produced them, e.g. shouted/c.txt"
    )
    assert "(inbox/)" in warning
    # And keeps warning from the stamp, while the answer comes from stats again
    age(echo)
    echo.sub("run")
    again = echo.sub("run", "--json")
    assert again.json["mode"] == "stat" and again.json["warnings"] == [warning]
    assert warnings(echo.sub("status").err) == [f"eventrunner: warning: {warning}"]
    assert echo.sub("validate", "--json").json["warnings"] == [warning]
    # When the file is removed, Then the warning goes
    echo.delete("shouted/c.txt")
    assert echo.sub("run", "--json").json["warnings"] == []


def test_an_incremental_run_tells_its_own_outputs_from_files_dropped_beside_them(
    echo: Workspace,
) -> None:
    # Given an up-to-date workspace whose next runs follow only what changed
    follow_changes(echo)

    # When an input changes, its outputs are rewritten in their folders (which moves them)
    echo.write("inbox/a.txt", "changed words here\n")
    res = echo.sub("run", "--json")
    # Then the run is incremental and its own outputs are no strays
    assert res.json["mode"] == "incremental" and res.json["executed"] >= 2
    assert res.json["warnings"] == []

    # When a new input comes and a file is dropped by hand beside the outputs, in one go
    age(echo)
    echo.sub("run")
    echo.write("inbox/c.txt", "new one\n")
    echo.write("shouted/zz.txt", "by hand\n")
    res = echo.sub("run", "--json")
    # Then only the dropped file is warned about
    assert res.json["mode"] == "incremental" and res.json["executed"] >= 2
    [warning] = res.json["warnings"]
    assert warning.startswith("1 file(s) match the output shouted/{name}.txt of stage echo.shout")
    assert "e.g. shouted/zz.txt" in warning
    # And an output deleted by hand and made again is no stray either
    echo.delete("shouted/zz.txt")
    echo.delete("shouted/b.txt")
    res = echo.sub("run", "--json")
    assert echo.exists("shouted/b.txt") and res.json["warnings"] == []


def test_an_output_deleted_and_a_file_dropped_beside_it_in_one_go_is_still_warned(
    echo: Workspace,
) -> None:
    # Given an up-to-date workspace whose next runs follow only what changed
    follow_changes(echo)

    # When one output goes and a stray comes (the folder holds as many files as before)
    echo.delete("shouted/b.txt")
    echo.write("shouted/zz.txt", "by hand\n")
    res = echo.sub("run", "--json")

    # Then the output is made again and the stray is warned all the same
    assert res.json["mode"] == "incremental" and echo.exists("shouted/b.txt")
    [warning] = res.json["warnings"]
    assert "of stage echo.shout but no state produced them, e.g. shouted/zz.txt" in warning


def test_the_count_check_answers_from_the_stamp_and_our_writes(echo: Workspace) -> None:
    # Given an up-to-date workspace and its stamp, loaded in this process as a run loads them
    follow_changes(echo)
    state = echo.root / ".eventrunner"
    ws = load_workspace(echo.root)
    index = Index.load(ws, Store(ws.settings.state_dir))

    def counts_settle() -> bool:
        look = fastpath.look(state)
        assert look is not None
        return nothing_new(index, "echo.shout", look)

    # Then the folder holds what the stamp recorded, also with an output gone (the look
    # finds it changed)
    assert counts_settle()
    echo.delete("shouted/b.txt")
    assert counts_settle()
    # And a file this process wrote counts as ours; one dropped beside it does not
    written = echo.write("shouted/c.txt", "C!\n")
    index.files.remember("shouted/c.txt", hash_file(str(written)))
    assert counts_settle()
    echo.write("shouted/zz.txt", "by hand\n")
    assert not counts_settle()


def test_outputs_eventrunner_wrote_are_not_strays_and_webhook_sources_need_no_files(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": """\
                [sources.hook]
                pattern = "hooks/{id}.json"
                webhook = { allow_unsigned = true }

                [stages.s]
                handler = "h:s"
                inputs = { t = "hooks/{id}.json" }
                output = "out/{id}/copy.txt"
                """,
            "handlers/h.py": "def s(t: str) -> str:\n    return t\n",
        }
    )
    assert not warnings(ws.sub("validate").err)
    ws.write("hooks/a.json", "{}")
    assert ws.sub("run").code == 0 and ws.exists("out/a/copy.txt")
    assert not warnings(ws.sub("run").err)
    # A stray two folders down is found too
    ws.write("out/zz/copy.txt", "by hand")
    [warning] = warnings(ws.sub("run").err)
    assert "e.g. out/zz/copy.txt" in warning


def test_unproduced_lists_only_pattern_matches_that_are_not_produced(tmp_path: Path) -> None:
    for rel in (
        "site/a.html",
        "site/b.html",
        "site/notes.txt",
        "site/.hidden.html",
        "site/x/y.html",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    pattern = parse_pattern("site/{slug}.html")

    assert unproduced(pattern, str(tmp_path), {"site/a.html"}) == ["site/b.html"]
    assert unproduced(pattern, str(tmp_path / "missing"), set()) == []


def test_status_and_run_through_a_server_warn_about_sources(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    ws = make_workspace({"pipelines/echo.toml": ECHO_PIPELINE, "handlers/echo.py": ECHO_HANDLERS})
    with serving(ws.root, tmp_path / "logs"):
        res = ws.sub("status")
        run = ws.sub("run", "--json")
    assert res.code == 0
    assert warnings(res.err) == [NO_INBOX]
    assert run.json["mode"] == "server"
    assert run.json["warnings"] == [NO_INBOX.removeprefix("eventrunner: warning: ")]


def test_run_through_a_server_warns_about_files_dropped_into_output_folders(
    echo: Workspace, tmp_path: Path
) -> None:
    with serving(echo.root, tmp_path / "logs"):
        assert echo.sub("run", "--json").json["warnings"] == []
        echo.write("counts/zz.json", "{}")
        res = echo.sub("run", "--json")
    assert res.json["mode"] == "server"
    [warning] = res.json["warnings"]
    assert "of stage echo.count but no state produced them, e.g. counts/zz.json" in warning
