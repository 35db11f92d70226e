"""A full fan-in call takes its members from the aggregate's cert and its worker hashes what it
reads (run/checked.py): the manifest records what the handler read, also when a member's file
was edited or removed by hand with no event. Real files, real `serve` and `run` subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FANIN_CHAIN, MakeWorkspace, Workspace
from serve_helpers import FAST_RUNTIME, Server, wait_until

from eventrunner.core.errors import PermanentError
from eventrunner.run.attempt import worker_checks
from eventrunner.run.checked import as_read, members
from eventrunner.run.inputfile import InputFile
from eventrunner.run.invoke import build_kwargs, convert
from eventrunner.state.hashing import hash_bytes
from eventrunner.workspace.load import load_workspace

HANDLERS = """\
def upper(r: str) -> str:
    return r.upper()


def count(u: str) -> str:
    return str(len(u.strip()))


def total(c: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(c.items())) + "\\n"
"""


def _file(root: Path, rel: str, data: bytes, given: bytes | None = None) -> InputFile:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return InputFile("c", rel.rsplit("/", 1)[-1], rel, hash_bytes(data if given is None else given))


def test_members_are_read_once_and_only_those_that_differ_or_vanished_are_noted(
    tmp_path: Path,
) -> None:
    # Given three members as a cert knows them: one as it is, one edited since, one gone since
    same = _file(tmp_path, "count/a", b"one\r\ntwo\rthree\n")
    edited = _file(tmp_path, "count/b", b"999", given=b"4")
    gone = _file(tmp_path, "count/c", b"7")
    (tmp_path / "count/c").unlink()
    checked: dict[tuple[str, str], str | None] = {}
    # When the worker reads them as str
    value = members(tmp_path, [same, edited, gone], str, "c", checked, convert)
    # Then the handler gets what read_text gives, the gone one left out
    assert value == {"a": (tmp_path / "count/a").read_text(encoding="utf-8"), "b": "999"}
    # And only the edited and the gone members are noted, with what was read
    assert checked == {("c", "count/b"): hash_bytes(b"999"), ("c", "count/c"): None}
    # And what the call read is every member as read, the gone one left out
    assert as_read([same, edited, gone], checked) == {
        "c": {"count/a": same.hash, "count/b": hash_bytes(b"999")}
    }


def test_path_members_are_left_to_the_handler_and_not_checked(tmp_path: Path) -> None:
    # Given handlers taking a fan-in's members as paths, and as text
    def as_paths(c: dict[str, Path]) -> str:
        return ""

    def as_text(c: dict[str, str]) -> str:
        return ""

    ws = load_workspace(_fanin_workspace(tmp_path))
    stage = ws.graph.stages["p.total"]
    f = _file(tmp_path, "count/a", b"new", given=b"old")
    # Then a Path member is not read for a check (the handler reads it, if it wants)
    checked: dict[tuple[str, str], str | None] = {}
    assert build_kwargs(stage, as_paths, [f], tmp_path, checked=checked) == {
        "c": {"a": tmp_path / "count/a"}
    }
    assert checked == {}
    # And serve hashes such members before the call instead, on every executor but with text
    assert not worker_checks(as_paths, stage, "thread")
    assert worker_checks(as_text, stage, "thread") and worker_checks(as_text, stage, "process")
    assert not worker_checks(as_text, stage, "dask")


def _fanin_workspace(root: Path) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines/p.toml").write_text(FANIN_CHAIN)
    (root / "handlers").mkdir()
    (root / "handlers/h.py").write_text(HANDLERS)
    return root


def _workspace(make_workspace: MakeWorkspace, executor: str) -> Workspace:
    # "async": the thread executor with an async fan-in handler (its inputs are read in a
    # thread, its coroutine awaited on the loop: run/executors.py)
    handlers = (
        HANDLERS.replace("def total(", "async def total(") if executor == "async" else HANDLERS
    )
    files: dict[str, str | bytes] = {
        "eventrunner.toml": FAST_RUNTIME + f'executor = "{executor.replace("async", "thread")}"\n',
        "pipelines/p.toml": FANIN_CHAIN,
        "handlers/h.py": handlers,
    }
    files.update({f"raw/e{i}.txt": "x" * (i + 1) for i in range(6)})
    return make_workspace(files)


def _today(ws: Workspace) -> str:
    counts = {p.stem: len(p.read_text().strip()) for p in ws.path("raw").glob("*.txt")}
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) + "\n"


@pytest.mark.parametrize("executor", ["thread", "process", "async"])
def test_member_outputs_edited_or_removed_by_hand_under_serve_are_recorded_as_read(
    make_workspace: MakeWorkspace, tmp_path: Path, executor: str
) -> None:
    # Given a built aggregate and `serve` on it, its cert made by a first event
    ws = _workspace(make_workspace, executor)
    assert ws.sub("run").code == 0
    with Server(ws.root, tmp_path) as server:
        ws.write("raw/e20.txt", "twenty")
        wait_until(lambda: ws.read("total.txt") == _today(ws), "the aggregate to catch up")
        # When one member's output is edited and another's removed by hand (outputs are not
        # watched), then a new member comes
        ws.write("count/e3.txt", "999")
        ws.delete("count/e4.txt")
        ws.write("raw/e21.txt", "z")
        wait_until(lambda: "e21=1" in ws.read("total.txt"), "the aggregate to run")
        # Then the handler read the members as they are: the edited one, and not the gone one
        text = ws.read("total.txt")
        assert "e3=999" in text and "e4=" not in text, text
        assert ws.states().get(("p.total", "_")) != "failed", server.stderr
        # And `run` (answered by the server) puts both back, and the aggregate follows: its
        # manifest recorded what was read, so the restored members differ from it
        assert ws.sub("run").code == 0
        assert ws.read("count/e3.txt") == "4" and ws.read("count/e4.txt") == "5"
        assert ws.read("total.txt") == _today(ws)
        assert server.stop() == 0, server.stderr
    # And a `run` afterwards finds everything fresh
    assert ws.sub("run", "--json").json["executed"] == 0


def test_a_folder_member_read_as_text_is_a_permanent_error_naming_the_fix(tmp_path: Path) -> None:
    # Given a member that is a folder, for a handler taking members as text
    (tmp_path / "count/d").mkdir(parents=True)
    f = InputFile("c", "d", "count/d", "0" * 32)
    # Then the call fails for good, saying to annotate the input as a Path
    with pytest.raises(
        PermanentError, match=r"is a folder; annotate the parameter as pathlib\.Path"
    ):
        members(tmp_path, [f], str, "c", {}, convert)
