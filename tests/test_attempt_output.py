"""What handlers print and log is kept with each attempt's record and shown by `eventrunner
logs`; tracebacks show the handler's frames first (issue 10.5). The CLI through real
subprocesses, on every local executor."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeWorkspace, Workspace

from eventrunner.core.tracebacks import handler_first, parse_frames
from eventrunner.run.capture import MAX_CHARS, capturing

PIPELINE = """\
[stages.s]
handler = "h:s"
inputs = { t = "in/{n}.txt" }
output = "out/{n}.txt"
"""

HANDLER = """\
import sys
import time


def helper(t):
    if t.startswith("bad"):
        raise ValueError("nope: " + t)
    return t.upper()


def s(ctx, t: str) -> str:
    for i in range(3):
        print(f"line {i} of", ctx.entity_id)
        time.sleep(0.01)  # let concurrent handlers interleave their prints
    print("warned on stderr", file=sys.stderr)
    ctx.log.info("a log line for %s", ctx.entity_id)
    return helper(t)
"""


def _workspace(make_workspace: MakeWorkspace, toml: str = "", **inputs: str) -> Workspace:
    files = {"pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLER}
    files |= {f"in/{n}.txt": text for n, text in inputs.items()}
    if toml:
        files["eventrunner.toml"] = toml + '[runtime.retry]\nbackoff = "1d"\nmax_backoff = "1d"\n'
    return make_workspace(files)


def _expected(n: str) -> str:
    lines = [f"line {i} of {n}" for i in range(3)]
    return "\n".join([*lines, "warned on stderr", f"INFO: a log line for {n}"]) + "\n"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_prints_and_log_lines_of_each_attempt_are_kept_and_shown_by_logs(
    make_workspace: MakeWorkspace, executor: str
) -> None:
    # Given concurrent handlers that print, write to stderr and log at INFO, one of them failing
    toml = f'[runtime]\nexecutor = "{executor}"\n'
    ws = _workspace(make_workspace, toml, **{f"e{i}": f"ok {i}" for i in range(6)}, b="bad")
    # When `run` (without -v) runs them four at a time
    res = ws.sub("run", "-j", "4")
    # Then nothing they printed reached the terminal
    assert res.code == 1, res.err
    assert "line 0 of" not in res.out + res.err and "a log line" not in res.out + res.err
    # And `logs` prints each attempt's own lines, successes and the failure alike
    for n in [f"e{i}" for i in range(6)] + ["b"]:
        shown = ws.sub("logs", "s", n)
        assert shown.code == 0, shown.err
        assert shown.out == _expected(n)
        outcome = "failed" if n == "b" else "succeeded"
        assert f"attempt 1, {outcome}" in shown.err
    data = ws.sub("logs", "s", "b", "--json").json
    assert data["outcome"] == "failed" and data["output"] == _expected("b")


def test_a_later_silent_attempt_shows_nothing_and_writes_no_output_file(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a state whose failed attempt printed, and a silent handler for another stage
    ws = _workspace(make_workspace, a="bad")
    ws.write(
        "pipelines/q.toml",
        '[stages.quiet]\nhandler = "q:quiet"\ninputs = { t = "in/{n}.txt" }\n'
        'output = "quiet/{n}.txt"\n',
    )
    ws.write("handlers/q.py", "def quiet(t: str) -> str:\n    return t\n")
    assert ws.sub("run").code == 1
    assert ws.sub("logs", "s", "a").out == _expected("a")
    # When the input is fixed and the handler no longer prints
    ws.write("handlers/h.py", "def s(t: str) -> str:\n    return t\n")
    ws.write("in/a.txt", "fine")
    assert ws.sub("run").code == 0
    # Then `logs` says the last attempt printed nothing, and prints nothing on stdout
    shown = ws.sub("logs", "s", "a")
    assert shown.code == 0 and shown.out == ""
    assert "printed nothing" in shown.err and "succeeded" in shown.err
    # And a stage that never printed has no output record at all (no file per silent success)
    assert not (ws.root / ".eventrunner" / "output" / "q.quiet").exists()


def test_output_is_bounded_to_its_last_64_kib_with_a_marker(make_workspace: MakeWorkspace) -> None:
    # Given a handler that prints far more than the bound
    ws = make_workspace(
        {
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": "def s(t: str) -> str:\n"
            "    for i in range(20000):\n        print(f'row {i:05d} ' + 'x' * 40)\n"
            "    return t\n",
            "in/a.txt": "a",
        }
    )
    assert ws.sub("run").code == 0
    # When its output is read back
    text = ws.sub("logs", "s", "a").out
    # Then only the last MAX_CHARS characters are kept, after a line saying what was dropped
    first, _, kept = text.partition("\n")
    assert first.startswith("[... ") and first.endswith(" earlier characters dropped ...]")
    dropped = int(first.split()[1])
    assert (
        len(kept) == MAX_CHARS and dropped + MAX_CHARS == 20000 * 51
    )  # "row 00000 " + 40 x + newline
    assert kept.endswith("row 19999 " + "x" * 40 + "\n")


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_secrets_a_handler_reads_never_reach_its_captured_output(
    make_workspace: MakeWorkspace, executor: str
) -> None:
    # Given a handler that prints and logs the secret it reads, then fails with it
    secret = "s3cr3t-value-for-the-output-test"
    ws = make_workspace(
        {
            "eventrunner.toml": f'[runtime]\nexecutor = "{executor}"\n',
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": "def s(ctx, t: str) -> str:\n"
            "    key = ctx.secret('ER_TEST_OUTPUT_KEY')\n"
            "    print('using', key)\n    ctx.log.warning('key %s', key)\n"
            "    raise RuntimeError('failed with ' + key)\n",
            "in/a.txt": "a",
        }
    )
    # When it runs
    assert ws.sub("run", env={"ER_TEST_OUTPUT_KEY": secret}).code == 1
    # Then the captured output has the secret masked, on disk as in `logs`
    shown = ws.sub("logs", "s", "a")
    assert shown.out == "using [redacted]\nWARNING: key [redacted]\n"
    state = ws.root / ".eventrunner"
    assert not [p for p in state.rglob("*.json") if secret in p.read_text()]


def test_logs_of_an_unknown_stage_or_entity_is_a_clear_error_with_did_you_mean(
    make_workspace: MakeWorkspace,
) -> None:
    ws = _workspace(make_workspace, alpha="ok")
    assert ws.sub("run").code == 0
    stage = ws.sub("logs", "ss", "alpha")
    assert stage.code == 2 and "no stage 'ss'" in stage.err and "did you mean 's'" in stage.err
    entity = ws.sub("logs", "s", "alpah")
    assert entity.code == 2 and "has no entity 'alpah'" in entity.err
    assert "did you mean 'alpha'" in entity.err and "Traceback" not in entity.err
    # An entity that exists but has not run: a sentence, exit 0
    ws.write("in/beta.txt", "ok")
    fresh = ws.sub("logs", "s", "beta")
    assert fresh.code == 0 and "has not run yet" in fresh.err


def test_logs_piped_to_head_ends_quietly(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": "def s(t: str) -> str:\n"
            "    for i in range(5000):\n        print('row', i)\n    return t\n",
            "in/a.txt": "a",
        }
    )
    assert ws.sub("run").code == 0
    proc = subprocess.run(
        f"{sys.executable} -m eventrunner.cli -w {ws.root} logs s a | head -2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.splitlines()[-2:] != [] and len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_explain_and_entities_show_the_handler_frames_before_eventrunner_frames(
    make_workspace: MakeWorkspace, executor: str
) -> None:
    # Given a handler that fails two calls deep in its own module
    ws = _workspace(make_workspace, f'[runtime]\nexecutor = "{executor}"\n', b="bad")
    assert ws.sub("run").code == 1
    # When explain and entities show the failure
    explained = ws.sub("explain", "b").out.splitlines()
    listed = ws.sub("entities").out.splitlines()
    # Then the handler's frames (outer first, innermost last) come before any eventrunner frame
    mine = [i for i, line in enumerate(explained) if 'File "handlers/h.py"' in line]
    ours = [i for i, line in enumerate(explained) if "/eventrunner/" in line and "File" in line]
    assert len(mine) == 2 and ours and max(mine) < min(ours)
    assert "in s" in explained[mine[0]] and "in helper" in explained[mine[1]]
    assert "raise ValueError" in explained[mine[1] + 1]
    assert any(line.strip() == "ValueError: nope: bad" for line in explained[max(mine) :])
    # And entities lists the handler's frames and the error, without eventrunner's
    at = listed.index("s b:") if "s b:" in listed else listed.index("p.s b:")
    block = listed[at + 1 : at + 6]
    assert 'File "handlers/h.py"' in block[0] and "in helper" in block[2]
    assert block[4].strip() == "ValueError: nope: bad"
    assert not any("/eventrunner/" in line for line in listed)
    # And explain --json names the handler's frames
    frames = ws.sub("explain", "b", "--json").json["stages"][0]["failure"]["handler_frames"]
    assert [(Path(f["file"]).name, f["function"]) for f in frames] == [
        ("h.py", "s"),
        ("h.py", "helper"),
    ]


def test_async_handlers_output_is_captured_per_task(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": "import asyncio\n\n\nasync def s(ctx, t: str) -> str:\n"
            "    for i in range(3):\n        print(ctx.entity_id, i)\n"
            "        await asyncio.sleep(0.01)\n    return t\n",
            **{f"in/a{i}.txt": "x" for i in range(4)},
        }
    )
    assert ws.sub("run", "-j", "4").code == 0
    for i in range(4):
        assert ws.sub("logs", "s", f"a{i}").out == "".join(f"a{i} {j}\n" for j in range(3))


def test_concurrent_threads_capture_their_own_writes_and_others_reach_the_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given two threads capturing at the same time, and one thread that does not capture
    barrier = threading.Barrier(3)
    got: dict[str, str] = {}

    def attempt(name: str) -> None:
        with capturing() as capture:
            for i in range(50):
                barrier.wait() if i == 0 else None
                print(name, i)
        got[name] = capture.text()

    def bystander() -> None:
        barrier.wait()
        print("not a handler")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in ("a", "b")]
    threads.append(threading.Thread(target=bystander))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Then each capture holds exactly its own lines and the bystander's line reached stdout
    for name in ("a", "b"):
        assert got[name] == "".join(f"{name} {i}\n" for i in range(50))
    assert capsys.readouterr().out == "not a handler\n"


def test_handler_first_reads_a_worker_traceback_chained_to_the_local_one() -> None:
    # A process worker's traceback travels as the text of a chained RemoteTraceback
    text = (
        "eventrunner.run.process_pool.RemoteTraceback: Traceback (most recent call last):\n"
        '  File "/x/eventrunner/run/invoke.py", line 9, in call_sync\n'
        "    return func(**kwargs)\n"
        '  File "/ws/handlers/h.py", line 3, in s\n'
        "    raise ValueError('no')\n"
        "    ^^^^^^^^^^^^^^^^^^^^^^\n"
        "ValueError: no\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "/x/eventrunner/run/engine.py", line 338, in _run_one\n'
        "    written = await self.executor.submit(call)\n"
        "ValueError: no\n"
    )
    frames, error = parse_frames(text)
    assert [f.function for f in frames] == ["call_sync", "s", "_run_one"]
    assert error == ["ValueError: no"]
    lines = handler_first(text, lambda f: f.startswith("/ws/handlers/"))
    assert lines[1:4] == [
        '  File "/ws/handlers/h.py", line 3, in s',
        "    raise ValueError('no')",
        "ValueError: no",
    ]
    assert json.dumps(frames[1].to_json())  # plain data


async def test_the_api_answers_what_the_last_attempt_printed(
    make_workspace: MakeWorkspace, aiohttp_client: Any
) -> None:
    from eventrunner.server.app import create_app
    from eventrunner.service.runtime import Runtime
    from eventrunner.workspace.load import load_workspace

    # Given a server whose handler printed for one entity and failed for another
    ws = _workspace(make_workspace, a="ok", b="bad")
    async with Runtime(load_workspace(ws.root), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        url = "/api/pipelines/p/entities/{}/logs"
        deadline = asyncio.get_running_loop().time() + 30
        while len(rt.index.manifests["p.s"]) + len(rt.index.failures["p.s"]) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the handlers never finished"
            await asyncio.sleep(0.05)
        # When the logs endpoint is asked
        answers = {}
        for eid in ("a", "b"):
            resp = await client.get(url.format(eid), params={"stage": "s"})
            assert resp.status == 200, await resp.text()
            answers[eid] = await resp.json()
        # Then it gives each one's output and outcome, and clear errors for bad requests
        assert answers["a"]["output"] == _expected("a") and answers["a"]["outcome"] == "succeeded"
        assert answers["b"]["output"] == _expected("b") and answers["b"]["outcome"] == "failed"
        unknown = await client.get(url.format("zz"), params={"stage": "s"})
        assert (
            unknown.status == 404 and "has no entity" in (await unknown.json())["error"]["message"]
        )
        assert (await client.get(url.format("a"))).status == 400  # no stage given
        await client.close()
