"""Files dropped into or taken from a source folder between runs: the incremental run lists the
changed folders instead of scanning every source (state/sourcediff.py), and must find exactly
what a scan finds. Each case ends with a full check (the stamp removed) that has nothing to do:
the incremental run left nothing for it."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import MakeWorkspace, Workspace, age

from eventrunner.state import fastpath
from eventrunner.state.scan import scan
from eventrunner.state.sourcediff import diff_sources
from eventrunner.workspace.load import load_workspace


def settled(ws: Workspace) -> None:
    """Up to date, old enough for the stamp, and answering from stats."""
    assert ws.sub("run").code == 0
    age(ws)
    assert ws.sub("run").code == 0
    assert ws.sub("run", "--json").json["mode"] == "stat"


def full_check_has_nothing_to_do(ws: Workspace) -> None:
    (ws.root / ".eventrunner" / "stamp.bin").unlink()
    res = ws.sub("run", "--json")
    assert res.json["mode"] == "full" and res.json["executed"] == 0, res.json


def test_files_dropped_and_removed_are_followed_from_the_folder_listing(echo: Workspace) -> None:
    # Given an up-to-date echo workspace (a.txt and b.txt)
    settled(echo)

    # When a file is dropped, another removed, and odd names appear beside them
    echo.write("inbox/c.txt", "three more words\n")
    echo.delete("inbox/a.txt")
    echo.write("inbox/.hidden.txt", "hidden\n")
    echo.write("inbox/notes.md", "not a .txt\n")
    echo.write("inbox/sub/d.txt", "one level down\n")
    os.symlink("/etc/hostname", echo.root / "inbox/outside.txt")
    res = echo.sub("run", "--json")

    # Then only c runs, through the chain and the fan-in, followed incrementally
    assert res.code == 0 and res.json["mode"] == "incremental", res.json
    assert res.json["executed"] == 3  # shout c, count c, summary
    assert echo.read("shouted/c.txt") == "THREE MORE WORDS!\n"
    assert "c=3" in echo.read("summary.md") and "a=" not in echo.read("summary.md")
    assert not echo.exists("shouted/.hidden.txt") and not echo.exists("shouted/outside.txt")

    # And the stamp it left lists today's sources: the next drop runs only the new file
    age(echo)
    stamped = fastpath.look(echo.root / ".eventrunner")
    assert stamped is not None
    assert stamped.sources == {"inbox/b.txt", "inbox/c.txt"}
    assert {k: sorted(v) for k, v in stamped.source_ids().items()} == {
        "inbox/{name}.txt": ["b", "c"]
    }
    assert echo.sub("run", "--json").json["mode"] in ("stat", "incremental")
    echo.write("inbox/e.txt", "five\n")
    res = echo.sub("run", "--json")
    assert res.json["mode"] == "incremental" and res.json["executed"] == 3, res.json
    full_check_has_nothing_to_do(echo)


def test_the_listing_finds_what_a_scan_finds(echo: Workspace) -> None:
    settled(echo)
    for name in ("c.txt", "d.txt", ".e.txt", "f.txt.tmp", "g.md"):
        echo.write(f"inbox/{name}", "x\n")
    echo.delete("inbox/b.txt")
    (echo.root / "inbox" / "h.txt").mkdir()  # a folder can be a source too
    look = fastpath.look(echo.root / ".eventrunner")
    assert look is not None and look.files_came_or_went

    ws = load_workspace(echo.root)
    diff = diff_sources(ws, look)

    assert diff is not None
    [(key, src)] = ws.graph.sources.items()
    scanned = sorted(rel for rel, _ in scan(src.pattern, ws.settings.data_root))
    assert sorted(diff.added) == sorted(set(scanned) - {"inbox/a.txt"})
    assert diff.gone == ["inbox/b.txt"]
    assert sorted(diff.ids[key]) == sorted(Path(rel).stem for rel in scanned)


def test_a_source_folder_made_after_the_stamp_is_listed(make_workspace: MakeWorkspace) -> None:
    # Given a pipeline whose inbox folder did not exist when the stamp was written
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/box/{n}.txt" }\n'
            'output = "out/{n}.txt"\n',
            "handlers/h.py": "def s(t: str) -> str:\n    return t.upper()\n",
            "in/.keep": "",
        }
    )
    settled(ws)
    # When the folder is made with a file in it
    ws.write("in/box/a.txt", "made later\n")
    res = ws.sub("run", "--json")
    # Then the file is found and run
    assert res.json["executed"] == 1 and ws.read("out/a.txt") == "MADE LATER\n", res.json
    full_check_has_nothing_to_do(ws)


def test_a_pattern_with_variables_in_folders_is_scanned(make_workspace: MakeWorkspace) -> None:
    # Given a source pattern with a variable folder level (not one listing)
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\n'
            'inputs = { t = "logs/{day}/{n}.txt" }\noutput = "out/{day}-{n}.txt"\n',
            "handlers/h.py": "def s(t: str) -> str:\n    return t.upper()\n",
            "logs/d1/a.txt": "first\n",
        }
    )
    settled(ws)
    look = fastpath.look(ws.root / ".eventrunner")
    assert look is not None
    # When a file arrives in a new day's folder
    ws.write("logs/d2/b.txt", "second\n")
    look = fastpath.look(ws.root / ".eventrunner")
    assert look is not None and look.files_came_or_went
    # Then the listing declines (the session scans), and the run finds it
    assert diff_sources(load_workspace(ws.root), look) is None
    res = ws.sub("run", "--json")
    assert res.json["executed"] == 1 and ws.read("out/d2-b.txt") == "SECOND\n", res.json
    full_check_has_nothing_to_do(ws)
