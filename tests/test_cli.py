"""The command line contract: init, status, entities, explain, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MakeWorkspace, Workspace

from eventrunner.cli.main import main
from eventrunner.core.staleness import STATES


def test_init_creates_a_workspace_that_validates_and_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a new folder scaffolded by init
    target = tmp_path / "new"
    assert main(["init", str(target)]) == 0
    ws = Workspace(target, capsys)

    # Then it validates, runs, and is all fresh afterwards
    assert ws.cli("validate").code == 0
    report = ws.run()
    assert report["failed"] == 0 and report["executed"] >= 1
    assert set(ws.states().values()) == {"fresh"}
    assert ws.run()["executed"] == 0


def test_init_refuses_an_existing_workspace(echo: Workspace) -> None:
    res = echo.cli("init", str(echo.root))

    assert res.code == 2
    assert "already" in res.err


def test_status_json_has_exactly_the_documented_shape(echo: Workspace) -> None:
    echo.run()

    data = echo.cli("status", "--json").json

    assert set(data) == {"pipelines"}
    assert set(data["pipelines"]) == {"echo"}
    assert set(data["pipelines"]["echo"]) == {"stages"}
    stages = data["pipelines"]["echo"]["stages"]
    assert set(stages) == {"shout", "count", "summary"}
    for counts in stages.values():
        assert set(counts) <= set(STATES)
        assert all(isinstance(n, int) for n in counts.values())
    assert stages["shout"]["fresh"] == 2
    assert stages["summary"]["fresh"] == 1


def test_status_before_any_run_counts_stale_and_waiting(echo: Workspace) -> None:
    stages = echo.cli("status", "--json").json["pipelines"]["echo"]["stages"]

    assert stages["shout"]["stale"] == 2
    assert stages["count"]["waiting"] == 2
    assert stages["summary"]["waiting"] == 1


def test_status_text_output_names_stages(echo: Workspace) -> None:
    res = echo.cli("status")

    assert res.code == 0
    for stage in ("shout", "count", "summary"):
        assert stage in res.out


def test_entities_filters_by_state_and_stage(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "handlers/h.py": "def s(t: str) -> str:\n    if t == 'bad':\n        raise ValueError(t)\n    return t\n",
            "in/a.txt": "ok",
            "in/b.txt": "bad",
            "in/c.txt": "ok",
        }
    )
    ws.run(expect=1)

    failed = ws.cli("entities", "--state", "failed", "--json").json["entities"]
    fresh = ws.cli("entities", "--state", "fresh", "--stage", "s", "--json").json["entities"]

    assert [(r["stage"], r["entity"], r["state"]) for r in failed] == [("p.s", "b", "failed")]
    assert failed[0]["reasons"]
    assert sorted(r["entity"] for r in fresh) == ["a", "c"]


def test_entities_with_unknown_state_exits_2(echo: Workspace) -> None:
    res = echo.cli("entities", "--state", "sleepy")

    assert res.code == 2
    assert "sleepy" in res.err


def test_explain_lists_every_stage_of_an_entity(echo: Workspace) -> None:
    echo.run()

    data = echo.cli("explain", "a", "--json").json

    assert data["entity"] == "a"
    assert [(r["stage"], r["state"]) for r in data["stages"]] == [
        ("echo.shout", "fresh"),
        ("echo.count", "fresh"),
    ]
    assert data["stages"][0]["manifest"]["outputs"].keys() == {"shouted/a.txt"}


def test_explain_unknown_entity_exits_2(echo: Workspace) -> None:
    res = echo.cli("explain", "nobody")

    assert res.code == 2
    assert "nobody" in res.err


def test_unknown_stage_or_pipeline_exits_2(echo: Workspace) -> None:
    for args in (
        ["run", "--stage", "nope"],
        ["run", "--pipeline", "nope"],
        ["hold", "nope"],
        ["entities", "--stage", "nope"],
    ):
        res = echo.cli(*args)
        assert res.code == 2, args
        assert "nope" in res.err


def test_run_with_an_unknown_entity_exits_2(echo: Workspace) -> None:
    res = echo.cli("run", "--entity", "nobody")

    assert res.code == 2
    assert "nobody" in res.err


def test_retry_of_an_unknown_stage_exits_2(echo: Workspace) -> None:
    res = echo.cli("retry", "nope", "a")

    assert res.code == 2
    assert "nope" in res.err


def test_workspace_is_found_upward_from_the_current_folder(
    echo: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (echo.root / "inbox" / "deeper").mkdir()
    monkeypatch.chdir(echo.root / "inbox" / "deeper")

    assert main(["run", "--json"]) == 0
    assert echo.exists("summary.md")


def test_no_workspace_found_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["status"]) == 2
    assert "no workspace" in capsys.readouterr().err


def test_exit_codes_and_no_traceback_in_a_real_process(echo: Workspace) -> None:
    ok = echo.sub("run", "--json")
    unknown = echo.sub("explain", "nobody")
    bad_usage = echo.sub("frobnicate")

    assert ok.code == 0 and ok.json["executed"] == 5
    assert unknown.code == 2 and "Traceback" not in unknown.err
    assert bad_usage.code == 2 and "Traceback" not in bad_usage.err


def test_failed_run_exits_1_in_a_real_process(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "handlers/h.py": "def s(t: str) -> str:\n    raise ValueError('nope')\n",
            "in/a.txt": "x",
        }
    )

    res = ws.sub("run")

    assert res.code == 1
    assert "ValueError: nope" in res.out
    assert "Traceback" not in res.err


def test_every_reading_command_takes_json(echo: Workspace) -> None:
    echo.run()
    for args in (
        ["status"],
        ["entities"],
        ["explain", "a"],
        ["validate"],
        ["prune", "--dry-run"],
        ["run"],
    ):
        res = echo.cli(*args, "--json")
        assert res.code == 0, args
        assert isinstance(res.json, dict), args


@pytest.mark.parametrize("command", ["entities --json", "entities", "graph", "validate --json"])
def test_output_piped_to_head_ends_quietly(make_workspace: MakeWorkspace, command: str) -> None:
    # Given a workspace whose listings are far longer than a pipe's buffer
    files: dict[str, str | bytes] = {
        "pipelines/p.toml": "".join(
            f'[stages.s{i}]\nhandler = "h:up"\ninputs = {{ r = "raw{i}/{{id}}.txt" }}\n'
            f'output = "out{i}/{{id}}.txt"\n'
            for i in range(40)
        ),
        "handlers/h.py": "def up(r: str) -> str:\n    return r\n",
    }
    files.update({f"raw0/{'e' * 60}{n:05}.txt": "x" for n in range(3000)})
    ws = make_workspace(files)
    # When its output is piped to `head -c 100` (which exits after 100 bytes)
    script = (
        f"set -o pipefail; {sys.executable} -m eventrunner.cli -w {ws.root} {command} | head -c 100"
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=120)
    # Then there is no traceback, and the command exits as if it had finished
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 100
