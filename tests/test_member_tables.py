"""An aggregate's manifest records its members by reference (core/members.py, state/members.py):
a digest and count, and a member log beside it that each commit extends by what changed. Real
files, real `run` subprocesses (SIGKILLed for the crash), no mocks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MakeWorkspace, Workspace
from test_incremental_fanin import KILL_AT_RENAME, calls, full_result, index, run, workspace

from eventrunner.core.members import Members, table_digest
from eventrunner.state.members import read_log, write_logs

STATE = ".eventrunner/state/p.index"

# A fan-in straight over source files, with a handler that reads every member: its staleness
# comes from the full walk, so `explain` names each added, removed and changed member.
SOURCE_FANIN = """\
[stages.index]
handler = "h:index"
inputs  = { r = "raw/{id}.txt" }
output  = "index.json"
"""

PLAIN = """\
def index(r: dict[str, str]) -> dict:
    return {k: len(v) for k, v in sorted(r.items())}
"""


def manifest(ws: Workspace) -> dict:
    data: dict = json.loads(ws.read(f"{STATE}/_.json"))
    return data


def log_of(ws: Workspace) -> Path:
    ref = manifest(ws)["members"]
    (name,) = ref
    return ws.path(f"{STATE}/{ref[name]['file']}")


def test_each_commit_of_an_aggregate_appends_only_what_changed_to_its_member_log(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built incremental aggregate of six members
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    m = manifest(ws)
    assert m["files"] == {} and "inputs" not in m and m["members"]["c"]["count"] == 6
    size = log_of(ws).stat().st_size
    # When one member is added
    ws.write("raw/e9.txt", "abc")
    run(ws)
    # Then the manifest records seven members, and the log grew by one short line
    m = manifest(ws)
    assert m["members"]["c"]["count"] == 7
    grown = log_of(ws).read_bytes()[size:]
    assert grown.count(b"\n") == 1 and json.loads(grown) == {"count/e9.txt": m_hash(ws, "e9")}
    assert m["members"]["c"]["length"] == log_of(ws).stat().st_size
    # And the result is a full call's, everything fresh
    assert index(ws) == full_result(ws)
    assert set(ws.states().values()) == {"fresh"}


def m_hash(ws: Workspace, member: str) -> str:
    from eventrunner.state.hashing import hash_path

    return hash_path(ws.path(f"count/{member}.txt"))


def test_explain_of_an_aggregate_names_added_removed_and_changed_members_from_its_log(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a plain fan-in over source files, built
    files: dict[str, str | bytes] = {"pipelines/p.toml": SOURCE_FANIN, "handlers/h.py": PLAIN}
    files.update({f"raw/e{i}.txt": "x" * (i + 1) for i in range(4)})
    ws = make_workspace(files)
    run(ws)
    assert manifest(ws)["members"]["r"]["count"] == 4
    # When a member is added, one removed and one changed
    ws.write("raw/e7.txt", "seven")
    ws.delete("raw/e0.txt")
    ws.write("raw/e1.txt", "changed")
    # Then explain names each, read from the member log
    reasons = ws.explain("_", "index")["reasons"]
    got = {(r["code"], r["detail"]["path"]) for r in reasons if "detail" in r}
    assert got == {
        ("INPUT_ADDED", "raw/e7.txt"),
        ("INPUT_REMOVED", "raw/e0.txt"),
        ("INPUT_CHANGED", "raw/e1.txt"),
    }
    # And the run gives the handler every member, and records them
    run(ws)
    assert json.loads(ws.read("index.json")) == {"e1": 7, "e2": 3, "e3": 4, "e7": 5}
    assert manifest(ws)["members"]["r"]["count"] == 4
    assert ws.reasons("_", "index") == set()


def test_an_old_format_manifest_listing_every_member_is_read_then_replaced(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a built aggregate whose manifest is as main wrote it: every member listed under
    # "inputs", no member log, and no index cache
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    m = manifest(ws)
    log = log_of(ws)
    mem = Members.from_json(m["members"]["c"])
    mem.folder = str(log.parent)
    table = read_log(mem)
    assert len(table) == 6
    old = {k: v for k, v in m.items() if k not in ("members", "format", "files")}
    old["inputs"] = {"c": table}
    ws.write(f"{STATE}/_.json", json.dumps(old))
    log.unlink()
    for name in ("index.sqlite", "index.seal", "stamp.bin"):
        ws.path(f".eventrunner/{name}").unlink(missing_ok=True)
    # Then it is read as it says: everything fresh, nothing runs
    assert set(ws.states().values()) == {"fresh"}
    assert ws.sub("run", "--json").json["executed"] == 0
    # When a member is added
    ws.write("raw/e9.txt", "abc")
    run(ws)
    # Then the old manifest was trusted as a previous output (an incremental call), and the
    # new one records its members by reference
    assert calls(ws) == ["incr added=e9 changed= removed= members=7"]
    assert index(ws) == full_result(ws)
    m = manifest(ws)
    assert m["format"] == 2 and m["members"]["c"]["count"] == 7
    assert set(ws.states().values()) == {"fresh"}


@pytest.mark.parametrize("damage", ["corrupted", "truncated", "deleted"])
def test_a_damaged_member_log_makes_the_aggregate_stale_and_the_next_call_full(
    make_workspace: MakeWorkspace, damage: str
) -> None:
    # Given a built incremental aggregate
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    log = log_of(ws)
    # When its member log is damaged
    data = log.read_bytes()
    if damage == "corrupted":
        log.write_bytes(data.replace(b'"count/e2.txt":"', b'"count/e2.txt":"f', 1))
    elif damage == "truncated":
        log.write_bytes(data[: len(data) // 2])
    else:
        log.unlink()
    ws.path(".eventrunner/index.sqlite").unlink()  # read afresh: the log is found damaged
    # Then the aggregate is not fresh on that record
    assert ws.states()[("p.index", "_")] == "stale"
    # And a member added next is not folded into a previous output taken on trust: a full call
    ws.write("raw/e9.txt", "abc")
    run(ws)
    assert calls(ws) == ["full 7"]
    assert index(ws) == full_result(ws)
    assert set(ws.states().values()) == {"fresh"}
    assert manifest(ws)["members"]["c"]["gen"] == 2  # a new log, whole


@pytest.mark.parametrize("change", ["added", "removed"])
def test_sigkill_in_the_middle_of_an_aggregates_commit_leaves_it_right(
    make_workspace: MakeWorkspace, change: str
) -> None:
    # Given a built aggregate, and a member added or removed
    ws = workspace(make_workspace)
    run(ws)
    calls(ws)
    before = manifest(ws)["members"]["c"]
    if change == "added":
        ws.write("raw/e7.txt", "seven!!")
    else:
        ws.delete("raw/e3.txt")
    # When `run` is SIGKILLed as it renames the aggregate's manifest into place: its member
    # log line is written, and its output renamed
    target = ws.path(f"{STATE}/_.json")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, str(target), "-w", str(ws.root), "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    calls(ws)
    # Then the manifest on disk is the previous one, and its log holds what it covers
    assert manifest(ws)["members"]["c"] == before
    assert log_of(ws).stat().st_size > before["length"]  # the lost commit's line, after it
    # And the next run is right, and cuts the lost line off before its own
    run(ws)
    assert index(ws) == full_result(ws)
    after = manifest(ws)["members"]["c"]
    assert after["length"] == log_of(ws).stat().st_size
    assert after["count"] == (7 if change == "added" else 5)
    states = ws.states()
    assert states[("p.index", "_")] == "fresh"
    assert set(states.values()) <= {"fresh", "orphaned"}  # a removed member's count: prune's
    # And a fresh read of the log checks out against the manifest
    ws.path(".eventrunner/index.sqlite").unlink()
    assert ws.states() == states


def test_a_member_log_is_compacted_into_a_new_file_once_it_outgrows_the_table(
    tmp_path: Path,
) -> None:
    # Given a table of three members, written
    from eventrunner.core.records import Manifest

    table = {"a": "1", "b": "2", "c": "3"}
    mem = Members.snapshot("_.c", 1, dict(table), str(tmp_path))
    write_logs(_manifest(Manifest, mem), str(tmp_path))
    # When more than 2 x members + 1024 changes are committed one at a time
    for i in range(1100):
        new = {"a": str(i)} if i % 2 else {"z": str(i)}
        olds = {p: table.get(p) for p in new}
        mem = mem.after(dict(new), olds, "_.c")
        table.update(new)
        write_logs(_manifest(Manifest, mem), str(tmp_path))
    # Then the log was started afresh once, and reads back as the table
    assert mem.gen == 2 and mem.entries < 100
    fresh = Members(mem.file, mem.gen, mem.length, mem.digest, mem.count, mem.entries)
    fresh.folder = str(tmp_path)
    assert fresh.table() == table and not fresh.broken
    assert mem.digest == table_digest(table) and mem.count == len(table)


def _manifest(cls: type, mem: Members) -> object:
    return cls("p.index", "_", {}, "c", "p", {"c": mem}, {"index.json": "h"}, 0.0, 0, 0.0)
