"""Incremental fan-in handlers (`Changes[T]`): they fold what changed into their previous output,
and fall back to a full call whenever that output cannot be trusted. Real files, real `run` and
`serve` subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MakeWorkspace, Workspace
from serve_helpers import Server, wait_until

CHAIN = """\
[stages.count]
handler = "h:count"
inputs  = { r = "raw/{id}.txt" }
output  = "count/{id}.txt"

[stages.index]
handler = "h:index"
inputs  = { c = "count/{id}.txt" }
output  = "index.json"
params  = { scale = 1 }
"""

# A keyed merge: associative, and what it keeps per member is in its own output, so added,
# changed and removed members are all folded in without reading the others. Each call logs
# how it was called ("full N" or "incr" with the ids it was given).
HANDLERS = """\
import json
from pathlib import Path

from eventrunner import Changes


def _log(line):
    with open(Path(__file__).resolve().parent.parent / "calls.log", "a") as fh:
        fh.write(line + "\\n")


def count(r: str) -> str:
    return str(len(r.strip()))


def index(ctx, c: Changes[str]) -> dict:
    scale = ctx.params["scale"]
    if c.full:
        _log(f"full {len(c.added)}")
        out = {}
    else:
        _log(
            "incr added=" + ",".join(sorted(c.added)) + " changed=" + ",".join(sorted(c.changed))
            + " removed=" + ",".join(sorted(c.removed)) + f" members={c.members}"
        )
        out = json.loads(c.previous)
    for gone in c.removed:
        del out[gone]
    for member, text in {**c.added, **c.changed}.items():
        out[member] = int(text) * scale
    return dict(sorted(out.items()))
"""


def workspace(make_workspace: MakeWorkspace, n: int = 6) -> Workspace:
    files: dict[str, str | bytes] = {"pipelines/p.toml": CHAIN, "handlers/h.py": HANDLERS}
    files.update({f"raw/e{i}.txt": "x" * (i + 1) for i in range(n)})
    return make_workspace(files)


def calls(ws: Workspace) -> list[str]:
    """The index handler's calls since the last look."""
    log = ws.path("calls.log")
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    log.unlink()
    return lines


def full_result(ws: Workspace, scale: int = 1) -> dict[str, int]:
    """What a full call over today's raw files produces."""
    return {
        p.stem: len(p.read_text().strip()) * scale for p in sorted(ws.path("raw").glob("*.txt"))
    }


def run(ws: Workspace) -> None:
    """`eventrunner run` as a real subprocess; it must succeed."""
    res = ws.sub("run", "-j", "2")
    assert res.code == 0, res.err


def index(ws: Workspace) -> dict[str, int]:
    data: dict[str, int] = json.loads(ws.read("index.json"))
    return data


def test_first_run_is_a_full_call_and_an_added_member_is_folded_in(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a fresh workspace, built once
    ws = workspace(make_workspace)
    run(ws)
    # Then the first call was a full one, over every member
    assert calls(ws) == ["full 6"]
    # When one member is added
    ws.write("raw/e9.txt", "abc")
    run(ws)
    # Then the handler got only that member beside its previous output, and the result is a
    # full call's
    assert calls(ws) == ["incr added=e9 changed= removed= members=7"]
    assert index(ws) == full_result(ws)
    assert set(ws.states().values()) == {"fresh"}


def test_added_changed_and_removed_members_equal_a_full_call(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built aggregate
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    # When one member is added, one changed and one removed in one go
    ws.write("raw/e7.txt", "yy")
    ws.write("raw/e2.txt", "zzzzzzzz")
    ws.delete("raw/e4.txt")
    run(ws)
    # Then one incremental call got exactly those three
    assert calls(ws) == ["incr added=e7 changed=e2 removed=e4 members=6"]
    incremental = ws.read("index.json")
    # And a full call (forced by an invalidation) writes the very same bytes
    assert ws.sub("invalidate", "index").code == 0
    run(ws)
    assert calls(ws) == ["full 6"]
    assert ws.read("index.json") == incremental
    assert index(ws) == full_result(ws)


def test_a_member_whose_output_did_not_change_leaves_the_incremental_aggregate_fresh(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built aggregate
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    # When a source changes but its count stays the same (early cutoff at count)
    ws.write("raw/e3.txt", "abcd")  # was "xxxx"
    run(ws)
    # Then the aggregate was not called at all, and everything is fresh
    assert calls(ws) == []
    assert set(ws.states().values()) == {"fresh"}


@pytest.mark.parametrize("how", ["edited", "deleted"])
def test_an_edited_or_missing_output_makes_the_next_call_full(
    make_workspace: MakeWorkspace, how: str
) -> None:
    # Given a built aggregate whose output is then edited by hand, or deleted
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    if how == "edited":
        ws.write("index.json", json.dumps({"bogus": 1}))
    else:
        ws.delete("index.json")
    # When a member is added
    ws.write("raw/e8.txt", "q")
    run(ws)
    # Then the call was a full one: nothing of the untrusted output survives
    assert calls(ws) == ["full 7"]
    assert index(ws) == full_result(ws)


def test_changed_params_or_code_make_the_next_call_full(make_workspace: MakeWorkspace) -> None:
    # Given a built aggregate
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    # When its params change (the output would be scaled differently)
    ws.write("pipelines/p.toml", CHAIN.replace("scale = 1", "scale = 3"))
    run(ws)
    # Then the call is full and the result is today's
    assert calls(ws) == ["full 6"]
    assert index(ws) == full_result(ws, scale=3)
    # When its code changes (a new line in the handler's body)
    ws.write("handlers/h.py", HANDLERS.replace("    scale = ctx", "    scale = 0 + ctx"))
    run(ws)
    assert calls(ws) == ["full 6"]
    # And the next added member is incremental again
    ws.write("raw/e11.txt", "ww")
    run(ws)
    assert calls(ws) == ["incr added=e11 changed= removed= members=7"]
    assert index(ws) == full_result(ws, scale=3)


SUM_HANDLERS = """\
from pathlib import Path

from eventrunner import Changes, NeedFullCall


def _log(line):
    with open(Path(__file__).resolve().parent.parent / "calls.log", "a") as fh:
        fh.write(line + "\\n")


def count(r: str) -> str:
    return str(len(r.strip()))


def total(c: Changes[str]) -> str:
    if c.changed or c.removed:  # a sum cannot take back a member's old share
        _log("asked for a full call")
        raise NeedFullCall()
    _log("full" if c.full else "incr")
    start = 0 if c.previous is None else int(c.previous)
    return f"{start + sum(int(v) for v in c.added.values())}\\n"
"""

SUM_CHAIN = CHAIN.replace('handler = "h:index"', 'handler = "h:total"').replace(
    'output  = "index.json"', 'output  = "total.txt"'
)


def test_a_handler_that_asks_for_a_full_call_gets_every_member(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a sum over counts that can add members but not take them back
    files: dict[str, str | bytes] = {"pipelines/p.toml": SUM_CHAIN, "handlers/h.py": SUM_HANDLERS}
    files.update({f"raw/e{i}.txt": "x" * (i + 1) for i in range(5)})
    ws = make_workspace(files)
    run(ws)
    assert calls(ws) == ["full"]
    # When a member is added, it is folded in
    ws.write("raw/e9.txt", "abcdefghij")
    run(ws)
    assert calls(ws) == ["incr"]
    assert ws.read("total.txt") == f"{1 + 2 + 3 + 4 + 5 + 10}\n"
    # When a member is removed, the handler asks for a full call and gets it at once
    ws.delete("raw/e0.txt")
    run(ws)
    assert calls(ws) == ["asked for a full call", "full"]
    assert ws.read("total.txt") == f"{2 + 3 + 4 + 5 + 10}\n"
    assert [v for (q, _), v in ws.states().items() if q == "p.index"] == ["fresh"]


def test_changes_on_a_map_input_is_a_clear_permanent_error(
    make_workspace: MakeWorkspace,
) -> None:
    bad = HANDLERS + '\n\ndef wrong(r: Changes[str]) -> str:\n    return "x"\n'
    pipeline = CHAIN.replace('handler = "h:count"', 'handler = "h:wrong"')
    ws = make_workspace({"pipelines/p.toml": pipeline, "handlers/h.py": bad, "raw/a.txt": "a"})
    res = ws.sub("run")
    assert res.code == 1
    assert "input r: Changes[...] is for fan-in inputs only" in res.out
    assert ws.states()[("p.count", "a")] == "dead"


# `eventrunner run` in a real process that SIGKILLs itself as it is about to rename the file
# named by argv[1] into place (an audit hook sees every os.rename/os.replace before it happens).
KILL_AT_RENAME = """\
import os, runpy, signal, sys

target = sys.argv.pop(1)


def hook(event, args):
    if event == "os.rename" and os.fspath(args[1]) == target:
        os.kill(os.getpid(), signal.SIGKILL)


sys.addaudithook(hook)
sys.argv[0] = "eventrunner"
runpy.run_module("eventrunner.cli", run_name="__main__")
"""


def test_sigkill_between_the_aggregates_output_and_its_manifest_makes_the_next_call_full(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built aggregate, and a member added
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    ws.write("raw/e7.txt", "seven!!")
    before = ws.read("index.json")
    # When `run` is SIGKILLed just before it renames the aggregate's manifest into place,
    # after its new output was renamed
    manifest = ws.path(".eventrunner/state/p.index/_.json")
    assert manifest.is_file()
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, str(manifest), "-w", str(ws.root), "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert calls(ws) == ["incr added=e7 changed= removed= members=7"]
    # Then the new output is in place without its manifest, which reads as an edited output
    assert ws.read("index.json") != before
    assert "OUTPUT_MODIFIED" in ws.reasons("_", "index")
    # And the next run cannot trust it: a full call, with the right result, and all fresh
    run(ws)
    assert calls(ws) == ["full 7"]
    assert index(ws) == full_result(ws)
    assert set(ws.states().values()) == {"fresh"}


def test_serve_and_run_agree_on_an_incremental_aggregate(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a built aggregate and `serve` on it
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    with Server(ws.root, tmp_path) as server:
        # When members are added, changed and removed while it serves
        ws.write("raw/e20.txt", "twenty")
        wait_until(lambda: "e20" in index(ws), "e20 in the index")
        ws.write("raw/e1.txt", "changed-content")
        wait_until(lambda: index(ws).get("e1") == 15, "e1 changed")
        ws.delete("raw/e0.txt")
        wait_until(lambda: "e0" not in index(ws), "e0 removed")
        served = ws.read("index.json")
        assert server.stop() == 0, server.stderr
    # Then serve's calls were incremental, one per change
    got = calls(ws)
    assert got and all(line.startswith("incr") for line in got), got
    # And `run` finds everything fresh, and a full call agrees byte for byte
    assert json.loads(served) == full_result(ws)
    assert ws.sub("run", "--json").json["executed"] == 0
    assert ws.sub("invalidate", "index").code == 0
    run(ws)
    assert calls(ws) == ["full 6"]
    assert ws.read("index.json") == served


def test_the_auto_blog_index_is_incremental_and_equals_a_full_call(
    make_workspace: MakeWorkspace,
) -> None:
    # Given the auto-blog example's posts and index (its audio stage left out: no espeak here)
    example = Path(__file__).resolve().parent.parent / "examples" / "auto-blog"
    pipeline = (example / "pipelines/auto-blog.toml").read_text()
    files: dict[str, str | bytes] = {
        "pipelines/auto-blog.toml": pipeline,
        **{f"handlers/{p.name}": p.read_text() for p in (example / "handlers").glob("*.py")},
        **{f"logs/{p.name}": p.read_text() for p in (example / "logs").glob("*.md")},
    }
    ws = make_workspace(files)
    ws.sub("run")  # audio may be dead without espeak-ng; the index does not read it
    # When a day is added, one edited and one removed
    ws.write("logs/2026-11-26.md", "# Wednesday: a new day\n\nMore shed.\n")
    ws.write("logs/2026-11-24.md", "# Monday, retold\n\nSoup again.\n")
    ws.delete("logs/2026-11-23.md")
    ws.delete("blog/2026-11-23.html")
    ws.sub("run")
    incremental = ws.read("blog/index.html")
    assert "Wednesday: a new day" in incremental and "Monday, retold" in incremental
    assert "2026-11-23" not in incremental
    # Then a full call (forced by an invalidation) writes the very same page
    assert ws.sub("invalidate", "index").code == 0
    ws.sub("run")
    assert ws.read("blog/index.html") == incremental
