"""The habits a command line is expected to have: --version, global flags after the command,
help and examples, JSON for the graph, sentences for state changes, local times, each failure
once, "did you mean", Ctrl-C, shell completion. Through real subprocesses."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MakeWorkspace, Workspace
from serve_helpers import serving, wait_until

from eventrunner import __version__
from eventrunner.cli.parser import COMMANDS, build_parser

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"

FAILING = {
    "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\n'
    'output = "out/{n}.txt"\n',
    "handlers/h.py": "def s(t: str) -> str:\n    if t == 'bad':\n        raise ValueError('nope')\n"
    "    return t\n",
    "in/a.txt": "ok",
    "in/b.txt": "bad",
}


def test_version_flag_prints_the_package_version(echo: Workspace) -> None:
    res = echo.sub("--version")
    assert res.code == 0 and res.out.strip() == f"eventrunner {__version__}"


def test_global_flags_also_work_after_the_command(echo: Workspace, tmp_path: Path) -> None:
    # From a folder that is no workspace, -w after the command finds it; -v after it logs
    proc = subprocess.run(
        [sys.executable, "-m", "eventrunner.cli.main", "run", "--json", "-w", str(echo.root), "-v"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert " INFO " in proc.stderr  # -v: INFO logging
    status = subprocess.run(
        [sys.executable, "-m", "eventrunner.cli.main", "-w", "/nonexistent", "status", "-w",
         str(echo.root), "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr  # the later -w wins


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_option_has_a_help_line_and_every_command_an_example(echo: Workspace) -> None:
    commands = _subparsers(build_parser())
    assert set(commands) == set(COMMANDS)
    for name, sp in commands.items():
        for action in sp._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        assert sp.epilog and f"eventrunner {name}" in sp.epilog, name
    helped = echo.sub("status", "--help")
    assert helped.code == 0
    assert "examples:\n  eventrunner status" in helped.out
    assert "--check" in helped.out and "--allow-held" in helped.out


def test_graph_json_lists_stages_sources_and_edges(echo: Workspace) -> None:
    res = echo.sub("graph", "--json")

    assert res.code == 0
    data = res.json
    assert [s["stage"] for s in data["stages"]] == ["echo.shout", "echo.count", "echo.summary"]
    assert data["stages"][2]["kind"] == "fanin"
    assert data["stages"][2]["inputs"] == [
        {
            "name": "counts",
            "pattern": "counts/{name}.json",
            "from": "echo.count",
            "aggregated": True,
        }
    ]
    assert [s["pattern"] for s in data["sources"]] == ["inbox/{name}.txt"]
    assert {"from": "source:inbox/{name}.txt", "to": "echo.shout", "input": "text",
            "aggregated": False} in data["edges"]  # fmt: skip


def test_state_changes_print_sentences_and_json_on_request(echo: Workspace) -> None:
    echo.sub("run")
    cases = [
        (["hold", "shout", "a"], "held echo.shout: a; it runs again after `eventrunner release"),
        (["release", "shout"], "released every state of echo.shout; they run at the next"),
        (["invalidate", "shout", "a", "--downstream"], "invalidated 1 state(s) of echo.shout: a"),
        (["retry"], "nothing to retry: no failed or dead state"),
    ]
    for args, expected in cases:
        res = echo.sub(*args)
        assert res.code == 0, (args, res.err)
        assert res.out.startswith(expected), (args, res.out)
        assert "{" not in res.out, args  # no raw JSON
    assert "echo.count a" in echo.sub("invalidate", "shout", "a", "--downstream").out
    assert echo.sub("hold", "shout", "--json").json == {
        "stage": "echo.shout",
        "entities": ["*"],
        "held": True,
    }


def test_retry_times_show_as_local_iso_times_not_epoch_seconds(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(FAILING)
    ws.sub("run")

    explained = ws.sub("explain", "b").out
    listed = ws.sub("entities", "--state", "failed").out

    assert re.search(rf"retry at {ISO}", explained), explained
    assert re.search(rf"next retry at {ISO}", explained), explained
    assert re.search(rf"last failure \(attempt 1, {ISO}\): ValueError: nope", explained)
    assert re.search(r"retry at", listed) and not re.search(r"\b1[6-9]\d{8}\b", listed + explained)


def test_run_prints_each_failure_once(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(FAILING)
    res = ws.sub("run")

    assert res.code == 1
    assert (res.out + res.err).count("nope") == 1, (res.out, res.err)
    assert "FAILED p.s b: ValueError: nope" in res.out


def test_unknown_names_suggest_the_closest_ones(
    echo: Workspace, make_workspace: MakeWorkspace
) -> None:
    assert "did you mean 'shout'?" in echo.sub("hold", "shuot").err
    assert "did you mean 'echo.count'?" in echo.sub("run", "--stage", "echo.cuont").err
    assert "did you mean 'echo'?" in echo.sub("status", "--pipeline", "ecoh").err
    bad = make_workspace(
        {
            "pipelines/p.toml": '[stages.a]\nhandler = "hanlders:up"\ninputs = { t = "i/{n}" }\n'
            'output = "o/{n}"\n\n[stages.b]\nhandler = "handlers:uper"\ninputs = { t = "i/{n}" }\n'
            'output = "p/{n}"\n\n[stages.c]\nhandler = "markdwn"\ninputs = { t = "i/{n}" }\n'
            'output = "q/{n}"\n',
            "handlers/handlers.py": "def up(t: str) -> str:\n    return t\n",
        }
    )
    res = bad.sub("validate")
    assert res.code == 2
    assert "no module 'hanlders' in handlers/ (did you mean 'handlers'?)" in res.err
    assert "no function 'uper' in handlers.py (did you mean 'up'?)" in res.err
    assert "no module 'markdwn' in stock handlers (did you mean 'markdown'?)" in res.err


SLOW = """\
import time
from pathlib import Path


def work(ctx, t: str) -> str:
    if ctx.entity_id != "a":
        (Path(__file__).parent.parent / f"started-{ctx.entity_id}").write_text("")
        time.sleep(120)
    return t
"""


def test_ctrl_c_on_run_prints_what_was_done_and_left_and_exits_130(
    make_workspace: MakeWorkspace,
) -> None:
    # Given three entities, one worker, and a handler that is slow for all but the first
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:work"\ninputs = { t = "in/{n}.txt" }\n'
            'output = "out/{n}.txt"\n',
            "handlers/h.py": SLOW,
            **{f"in/{n}.txt": n for n in "abc"},
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrunner.cli.main", "-w", str(ws.root), "run", "-j", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # When Ctrl-C comes while the second one runs
        wait_until(lambda: any(ws.root.glob("started-*")), "the slow handler to start", 60)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Then it stops at once (not after the handler's 120 s), says what was done and what is
    # left, and exits 130
    assert time.monotonic() - sent < 60
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert "executed 2: 1 succeeded, 0 failed" in out, out
    assert "interrupted: 1 state(s) done, 2 left undone (1 queued, 1 stopped while running)" in out
    # And what was left stays stale for the next run
    assert ws.exists("out/a.txt") and not ws.exists("out/b.txt")
    would = ws.sub("run", "--dry-run", "--json").json["would_run"]
    assert sorted(w["entity"] for w in would) == ["b", "c"]


def _bash_complete(ws: Workspace, words: list[str]) -> list[str]:
    script = f"""
        eval "$({sys.executable} -m eventrunner.cli.main completion bash)"
        eventrunner() {{ {sys.executable} -m eventrunner.cli.main "$@"; }}
        COMP_WORDS=({" ".join(f"'{w}'" for w in words)}); COMP_CWORD={len(words) - 1}
        _eventrunner; printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_completion_completes_commands_options_and_stage_names(echo: Workspace) -> None:
    root = str(echo.root)
    assert _bash_complete(echo, ["eventrunner", "sta"]) == ["status"]
    assert "--allow-held" in _bash_complete(echo, ["eventrunner", "status", "--"])
    assert _bash_complete(echo, ["eventrunner", "graph", "--format", "m"]) == ["mermaid"]
    stages = _bash_complete(echo, ["eventrunner", "-w", root, "hold", ""])
    assert {"shout", "echo.shout", "summary"} <= set(stages)
    assert _bash_complete(echo, ["eventrunner", "-w", root, "run", "--stage", "co"]) == ["count"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_registers_the_same_function(echo: Workspace) -> None:
    script = f"""
        eval "$({sys.executable} -m eventrunner.cli.main completion zsh)"
        print -r -- "$_comps[eventrunner]"
        eventrunner() {{ {sys.executable} -m eventrunner.cli.main "$@"; }}
        t() {{ emulate -L sh; COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1));
              COMPREPLY=(); _eventrunner; echo "${{COMPREPLY[*]}}"; }}
        t eventrunner -w {echo.root} hold ""
    """
    env = {**os.environ, "HOME": str(echo.root)}  # no user's .zshrc or compinit cache
    proc = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    registered, stages = proc.stdout.splitlines()[:2]
    assert registered == "_bash_complete -F _eventrunner"
    assert {"shout", "echo.shout"} <= set(stages.split())


def _has_socket(pid: int) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())
    except OSError:  # gone, or an fd closed while looking
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the socket")
def test_ctrl_c_on_run_through_a_server_leaves_the_work_to_the_server(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:work"\ninputs = { t = "in/{n}.txt" }\n'
            'output = "out/{n}.txt"\n',
            "handlers/h.py": SLOW,
            "in/a.txt": "a",
            "in/b.txt": "b",
        }
    )
    with serving(ws.root, tmp_path / "logs") as server:
        wait_until(lambda: ws.exists("started-b"), "the server to start the slow handler")
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventrunner.cli.main", "-w", str(ws.root), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Once the run has asked the server (its socket is open) and waits for it to be
            # idle, which the slow handler prevents
            wait_until(lambda: _has_socket(proc.pid), "the run to connect to the server", 60)
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130
        assert "interrupted: the server at http://127.0.0.1:" in err and "Traceback" not in err
        assert server.proc is not None and server.proc.poll() is None  # it goes on
