"""The stat fast path and incremental runs: answers must equal what a full evaluation gives."""

from __future__ import annotations

import os
import time

import pytest
from conftest import ECHO_PIPELINE, LOG_HELPER, LOGGED_ECHO_HANDLERS, MakeWorkspace, Workspace, age


@pytest.fixture
def echo(make_workspace: MakeWorkspace) -> Workspace:
    """map, chain and fan-in, logging every execution to runs.log."""
    return make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": LOGGED_ECHO_HANDLERS,
            "inbox/hello.txt": "hello world\n",
            "inbox/other.txt": "one two three\n",
        }
    )


def settled(ws: Workspace) -> dict:
    """Bring the workspace up to date and record a stamp (a no-change full run writes it)."""
    ws.run()
    age(ws)
    report = ws.run()
    assert report["executed"] == 0
    assert (ws.root / ".eventrunner" / "stamp.bin").exists()
    return report


def test_no_change_run_is_answered_from_stats_alone(echo: Workspace) -> None:
    # Given a settled workspace with a stamp
    settled(echo)

    # When nothing changes
    report = echo.run()

    # Then the answer comes from stats, and it is the same as a full evaluation's
    assert report["mode"] == "stat"
    assert report["executed"] == 0
    assert set(echo.states().values()) == {"fresh"}


def test_changed_input_runs_incrementally_and_a_later_change_is_still_seen(echo: Workspace) -> None:
    # Given a settled workspace
    settled(echo)
    echo.runs()

    # When one input changes
    echo.write("inbox/hello.txt", "hello there world\n")
    age(echo)
    first = echo.run()

    # Then only its entity and the fan-in run, incrementally
    assert first["mode"] == "incremental"
    assert sorted(echo.runs()) == ["count hello", "shout hello", "summary _"]

    # When another input changes after that incremental run (regression: the stamp written by
    # an incremental run once covered only the files that run had touched)
    echo.write("inbox/bye.txt", "so long and thanks\n")
    age(echo)
    second = echo.run()

    # Then it is seen and processed
    assert second["executed"] == 3
    assert sorted(echo.runs()) == ["count bye", "shout bye", "summary _"]
    assert echo.read("shouted/bye.txt") == "SO LONG AND THANKS!\n"
    assert set(echo.states().values()) == {"fresh"}


def test_new_and_deleted_source_files_are_seen_through_folder_stats(echo: Workspace) -> None:
    settled(echo)
    echo.runs()

    # When a file is added
    echo.write("inbox/new.txt", "brand new\n")
    age(echo)
    report = echo.run()
    assert report["mode"] == "incremental"
    assert sorted(echo.runs()) == ["count new", "shout new", "summary _"]

    # When a file is deleted
    echo.delete("inbox/new.txt")
    age(echo)
    echo.run()

    # Then the fan-in re-runs without it and its states are orphaned
    assert echo.runs() == ["summary _"]
    assert "new" not in echo.read("summary.md")
    assert echo.states()[("echo.shout", "new")] == "orphaned"


def test_output_edited_by_hand_is_seen_by_the_fast_path(echo: Workspace) -> None:
    settled(echo)
    echo.runs()
    echo.write("shouted/hello.txt", "edited by hand\n")
    age(echo)

    report = echo.run()

    assert report["mode"] in ("incremental", "full")
    assert "shout hello" in echo.runs()
    assert echo.read("shouted/hello.txt") != "edited by hand\n"


def test_handler_edit_or_settings_change_takes_the_full_path(echo: Workspace, monkeypatch) -> None:
    settled(echo)
    handler = echo.path("handlers/echo.py")
    handler.write_text(
        handler.read_text().replace('ctx.params["suffix"]', 'ctx.params["suffix"] * 2', 1)
    )
    age(echo)
    assert echo.run()["mode"] == "full"

    age(echo)
    echo.run()
    monkeypatch.setenv("EVENTRUNNER_RUNTIME_CONCURRENCY", "3")
    assert echo.run()["mode"] == "full"


def test_state_changes_by_cli_commands_invalidate_the_stamp(echo: Workspace) -> None:
    settled(echo)
    echo.runs()

    echo.cli("invalidate", "shout", "hello")
    report = echo.run()

    assert report["mode"] == "full"
    assert "shout hello" in echo.runs()


def test_input_changed_during_a_run_is_not_hidden_by_the_stamp(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace whose handler for "a" rewrites z's input as a side effect, with
    # an old mtime (as `cp -p` or rsync would), so only a stat comparison can notice it
    handler = LOG_HELPER + (
        "\nimport os\n\n\ndef up(ctx, t: str) -> str:\n"
        "    _log('up', ctx.entity_id)\n"
        "    if ctx.entity_id == 'a' and 'touch' in t:\n"
        "        z = ctx.data_root / 'in' / 'z.txt'\n"
        "        z.write_text('rewritten by a side effect\\n')\n"
        "        os.utime(z, (1_600_000_000, 1_600_000_000))\n"
        "    return t.upper()\n"
    )
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.up]\nhandler = "h:up"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "handlers/h.py": handler,
            "in/a.txt": "a\n",
            "in/z.txt": "z\n",
        }
    )
    settled(ws)
    ws.runs()

    # When a's input changes and the run's handler rewrites z's input mid-run
    ws.write("in/a.txt", "touch\n")
    age(ws)
    ws.run()
    assert ws.runs() == ["up a"]

    # Then the next run still sees z's change
    report = ws.run()
    assert report["mode"] != "stat"
    assert ws.runs() == ["up z"]
    assert ws.read("out/z.txt") == "REWRITTEN BY A SIDE EFFECT\n"


def test_file_dropped_during_a_run_is_not_hidden_by_the_stamp(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace whose handler for "a" drops a new source file mid-run, i.e.
    # after the run's scan of inbox/ (the folder's new mtime must not be vouched for)
    handler = LOG_HELPER + (
        "\n\ndef up(ctx, t: str) -> str:\n"
        "    _log('up', ctx.entity_id)\n"
        "    if ctx.entity_id == 'a' and 'touch' in t:\n"
        "        (ctx.data_root / 'in' / 'late.txt').write_text('late\\n')\n"
        "        import os\n"
        "        for p in (ctx.data_root / 'in' / 'late.txt', ctx.data_root / 'in'):\n"
        "            os.utime(p, (1_600_000_000, 1_600_000_000))\n"
        "    return t.upper()\n"
    )
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.up]\nhandler = "h:up"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "handlers/h.py": handler,
            "in/a.txt": "a\n",
        }
    )
    settled(ws)
    ws.runs()
    ws.write("in/a.txt", "touch\n")
    age(ws)
    ws.run()
    assert ws.runs() == ["up a"]

    # When the next run comes (the late file's and the folder's mtimes are old: only the
    # snapshot of the folder taken before the scan can tell the stamp not to vouch for it)
    report = ws.run()

    assert report["mode"] != "stat"
    assert ws.runs() == ["up late"]


def test_a_future_dated_edit_keeps_runs_incremental(echo: Workspace) -> None:
    # Given a settled workspace, and an input edited with an mtime in the future (clock skew,
    # or a tool that bumps it for make); too recent for the stamp to vouch for
    settled(echo)
    echo.runs()
    future = time.time() + 2
    path = echo.write("inbox/hello.txt", "hello future world\n")
    os.utime(path, (future, future))
    first = echo.run()
    assert first["mode"] == "incremental"
    assert sorted(echo.runs()) == ["count hello", "shout hello", "summary _"]

    # When another input changes
    echo.write("inbox/other.txt", "four five six seven\n")
    age(echo)
    second = echo.run()

    # Then the run stays incremental (the recent file is re-checked, not everything), and the
    # recent file, unchanged since, runs nothing
    assert second["mode"] == "incremental"
    assert sorted(echo.runs()) == ["count other", "shout other", "summary _"]


def test_a_source_folder_created_after_the_stamp_is_seen(make_workspace: MakeWorkspace) -> None:
    # Given a settled workspace whose source folder does not exist yet
    ws = make_workspace(
        {"pipelines/echo.toml": ECHO_PIPELINE, "handlers/echo.py": LOGGED_ECHO_HANDLERS}
    )
    ws.run()
    age(ws)
    assert ws.run()["executed"] == 0
    assert (ws.root / ".eventrunner" / "stamp.bin").exists()

    # When the folder is created with a file in it
    ws.write("inbox/hello.txt", "hello world\n")
    age(ws)
    report = ws.run()

    # Then the file is processed (regression: the stamp covered only folders that existed, so
    # the answer came from stats and nothing ran)
    assert report["mode"] != "stat"
    assert sorted(ws.runs()) == ["count hello", "shout hello", "summary _"]
    assert ws.read("shouted/hello.txt") == "HELLO WORLD!\n"


def _stamped_paths(ws: Workspace) -> dict[str, tuple[int, int, int]]:
    import marshal

    from eventrunner.state import fastpath, packed

    with open(ws.root / ".eventrunner" / fastpath.STAMP, "rb") as fh:
        stamp = marshal.load(fh)
    return packed.recorded_stats(stamp["paths"], stamp["root"])


def _past_racy_window(ws: Workspace) -> None:
    """Wait until every data file's mtime is older than the stat fast path's racy window."""
    import time

    from eventrunner.state import fastpath

    newest = max(p.stat().st_mtime_ns for p in ws.root.rglob("*") if ".eventrunner" not in p.parts)
    deadline = time.monotonic() + 10
    while time.time_ns() - newest <= fastpath.RACY_NS:
        assert time.monotonic() < deadline, "the clock did not move past the racy window"
        time.sleep(0.01)


def test_a_source_written_just_before_a_cold_run_and_edited_in_place_is_seen(
    echo: Workspace,
) -> None:
    # Given a source whose mtime is inside the racy window when the cold run hashes it (so
    # the file cache does not keep it), and a cold run that stamps
    import os
    import time

    age(echo)
    racy = echo.root / "inbox" / "hello.txt"
    soon = time.time() + 1.0
    os.utime(racy, (soon, soon))
    assert echo.run()["mode"] == "full"
    assert (echo.root / ".eventrunner" / "stamp.bin").exists()
    echo.runs()
    # When it is edited in place (its folder's stat does not move)
    racy.write_text("hello edited world\n")
    past = time.time() - 5
    os.utime(racy, (past, past))
    report = echo.run()
    # Then the next run sees it (regression: the stamp left it out, and "stat" said nothing ran)
    assert report["mode"] != "stat"
    assert "shout hello" in echo.runs()
    assert echo.read("shouted/hello.txt") == "HELLO EDITED WORLD!\n"


def test_an_output_edited_by_hand_after_a_full_stamp_is_remade(echo: Workspace) -> None:
    # Given outputs committed just before a full run writes its stamp (the file cache forgets
    # entries this recent, so the stamp must take the outputs from the manifests)
    settled(echo)
    echo.write("inbox/hello.txt", "hello patched world\n")
    age(echo)
    assert echo.run()["mode"] == "incremental"
    (echo.root / ".eventrunner" / "stamp.bin").unlink()
    assert echo.run()["mode"] == "full"
    # When an output is edited by hand
    echo.write("shouted/hello.txt", "HAND EDITED\n")
    age(echo)
    report = echo.run()
    # Then the next run sees it and remakes it (regression: it answered "executed 0")
    assert report["executed"] == 1
    assert echo.read("shouted/hello.txt") == "HELLO PATCHED WORLD!\n"


def test_a_stamp_carried_forward_records_what_a_full_evaluation_would(echo: Workspace) -> None:
    # Given a settled workspace
    settled(echo)
    for step in ("modify", "add and delete"):
        # When inputs change and an incremental run patches the stamp it started from
        if step == "modify":
            echo.write("inbox/hello.txt", "hello patched world\n")
        else:
            echo.write("inbox/third.txt", "a third one\n")
            (echo.root / "inbox" / "other.txt").unlink()
        age(echo)
        assert echo.run()["mode"] == "incremental"
        carried = _stamped_paths(echo)

        # Then it holds the same paths and stats as the stamp a full evaluation writes now
        # (once the outputs it wrote are too old to be racy: the carried stamp vouches for
        # them as written by rename, a full evaluation that wrote nothing only past the window)
        (echo.root / ".eventrunner" / "stamp.bin").unlink()
        _past_racy_window(echo)
        assert echo.run()["mode"] == "full"
        assert carried == _stamped_paths(echo), step
        assert echo.run()["mode"] == "stat"


def test_a_full_run_that_ran_states_leaves_a_stamp_for_the_next_change(echo: Workspace) -> None:
    # Given a cold run that executes every state (definitions older than the racy window)
    age(echo)
    first = echo.run()
    assert first["mode"] == "full" and first["executed"] > 0
    assert (echo.root / ".eventrunner" / "stamp.bin").exists()
    echo.runs()

    # When one input changes
    echo.write("inbox/other.txt", "four five six seven\n")
    age(echo)
    report = echo.run()

    # Then the run follows that change only, and the result is what a full evaluation gives
    assert report["mode"] == "incremental"
    assert sorted(echo.runs()) == ["count other", "shout other", "summary _"]
    (echo.root / ".eventrunner" / "stamp.bin").unlink()
    assert echo.run()["executed"] == 0


def test_a_copied_workspace_does_not_trust_the_stamp_of_the_original(echo: Workspace) -> None:
    # Given a settled workspace copied with its state folder (`cp -a`: the stats are kept)
    import shutil

    from conftest import Workspace as Ws

    settled(echo)
    copy = Ws(echo.root.parent / "copy", echo._capsys)
    shutil.copytree(echo.root, copy.root, symlinks=True, copy_function=shutil.copy2)

    # When an input of the copy changes
    copy.write("inbox/hello.txt", "hello copied world\n")
    age(copy)
    report = copy.run()

    # Then the copy's own files are looked at (its stamp named the original's paths)
    assert report["mode"] != "stat"
    assert report["executed"] > 0
    assert copy.read("shouted/hello.txt") == "HELLO COPIED WORLD!\n"


def test_an_output_deleted_after_the_stamp_is_made_again(echo: Workspace) -> None:
    # Given a settled workspace with a stamp
    settled(echo)
    echo.runs()

    # When an output is deleted by hand
    (echo.root / "shouted" / "hello.txt").unlink()
    report = echo.run()

    # Then its producer runs again (the stamp saw the file go: not a source, so an output)
    assert report["mode"] != "stat"
    assert "shout hello" in echo.runs()
    assert echo.read("shouted/hello.txt") == "HELLO WORLD!\n"
