"""Start-up after a crash: debris swept, attempts that took the process down counted.

Real processes killed with SIGKILL (or ending themselves with os._exit), real files.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import MakeWorkspace
from serve_helpers import request, wait_until

DEBRIS_PIPELINE = """\
name = "debris"

[sources.feeds]
pattern = "feeds/{feed}.txt"

[stages.items]                 # fan-out: one file per line, in a folder per feed
handler = "h:items"
inputs  = { text = "feeds/{feed}.txt" }
output  = "items/{feed}/{item}.txt"

[stages.report]                # writes ctx.output_path itself, in a folder per feed
handler = "h:report"
inputs  = { text = "feeds/{feed}.txt" }
output  = "reports/{feed}/report.txt"

[stages.big]                   # one large output: its group commit syncs for a while
handler = "h:big"
inputs  = { text = "feeds/{feed}.txt" }
output  = "big/{feed}.bin"
"""

# While `block` exists the "stuck" feed's handlers stop half-way, as slow handlers do: the
# fan-out after its first item (items are produced lazily, like pages of a feed), the report
# after writing part of its output. The "large" output waits for `go`, so that the test is
# watching when its group commit starts.
DEBRIS_HANDLERS = """\
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

BLOCK = Path(__file__).resolve().parent.parent / "block"
GO = Path(__file__).resolve().parent.parent / "go"


def _stall(ctx):
    deadline = time.monotonic() + 60
    while ctx.entity_id == "stuck" and BLOCK.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


class Lazy(Mapping):
    def __init__(self, ctx, lines):
        self.ctx, self.lines = ctx, lines

    def __getitem__(self, key):
        if key != self.lines[0]:
            _stall(self.ctx)
        return key + "\\n"

    def __iter__(self):
        return iter(self.lines)

    def __len__(self):
        return len(self.lines)


def items(ctx, text: str):
    return Lazy(ctx, text.split())


def report(ctx, text: str) -> None:
    with open(ctx.output_path, "w") as fh:
        fh.write("partial ")
        fh.flush()
        _stall(ctx)
        fh.write(str(len(text.split())) + " words\\n")


def big(ctx, text: str) -> bytes:
    if ctx.entity_id != "large":
        return text.encode()
    deadline = time.monotonic() + 60
    while not GO.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return text.encode() * ((16 << 20) // len(text))
"""


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".er-tmp-*")) if folder.exists() else []


def test_restart_after_sigkill_sweeps_temp_files_from_state_and_output_folders(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a run killed while two handlers of feed "stuck" were half-way through their
    # outputs (fan-out items, a folder per feed) and a large output's group commit was syncing
    files = {"pipelines/debris.toml": DEBRIS_PIPELINE, "handlers/h.py": DEBRIS_HANDLERS}
    files.update({f"feeds/f{i}.txt": f"a{i} b{i} c{i}\n" for i in range(20)})
    files.update({"feeds/stuck.txt": "x y z\n", "feeds/large.txt": "0123456789abcdef\n"})
    ws = make_workspace(files)
    ws.write("block", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws.root), "run", "-j", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = ws.path(".eventrunner/state/debris.big")
    try:
        wait_until(lambda: _temps(ws.path("items/stuck")), "the stuck fan-out's first item")
        wait_until(lambda: _temps(ws.path("reports/stuck")), "the stuck report's temp output")
        # The large output's manifest waits beside its place while the barrier syncs.
        ws.write("go", "")
        wait_until(lambda: _temps(state), "the large output's commit", interval=0.0001)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    left = _temps(ws.root)
    assert _temps(ws.path(".eventrunner")) and _temps(ws.path("items")), left
    assert _temps(ws.path("reports")) and _temps(ws.path("big")), left

    # When the workspace is run again (the handlers no longer stall)
    ws.delete("block")
    res = ws.sub("run", "--json")

    # Then every state is fresh and no temp file of the crash is left anywhere
    assert res.code == 0, res.err
    assert _temps(ws.root) == []
    assert ws.read("reports/stuck/report.txt") == "partial 3 words\n"
    assert sorted(p.name for p in ws.path("items/stuck").iterdir()) == ["x.txt", "y.txt", "z.txt"]
    assert ws.path("big/large.bin").stat().st_size > 15 << 20
    assert set(ws.states().values()) == {"fresh"}


POISON_PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"

[stages.echo]
handler = "h:echo"
inputs  = { text = "inbox/{name}.txt" }
output  = "out/{name}.txt"
retry   = { max_attempts = 3, backoff = "1h", max_backoff = "1h" }
"""

# The thread executor runs handlers inside the server process: os._exit ends all of it.
POISON_HANDLERS = """\
import os
from pathlib import Path

import pytest

STARTS = Path(__file__).resolve().parent.parent / "starts.log"


def echo(ctx, text: str) -> str:
    with open(STARTS, "a") as fh:
        fh.write(ctx.entity_id + "\\n")
    if ctx.entity_id == "poison":
        os._exit(7)
    return text.upper()
"""

POISON_RUNTIME = """\
[runtime]
concurrency = 1
retry_sweep_interval = "200ms"
"""


def _serve(root: Path, log: Path) -> subprocess.Popen[str]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eventrunner.cli",
                "-w",
                str(root),
                "serve",
                "--port",
                "0",
                "--no-watch",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


class _AlertReceiver(http.server.BaseHTTPRequestHandler):
    """Keeps each alert's JSON body (a Slack-style webhook receiver on 127.0.0.1)."""

    bodies: list[dict[str, str]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_handler_that_ends_the_process_goes_dead_after_its_attempts_and_serve_survives(
    make_workspace: MakeWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler that calls os._exit for one entity, with three attempts allowed, and an
    # alert webhook that receives what goes dead
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlertReceiver)
    _AlertReceiver.bodies = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    monkeypatch.setenv("ER_TEST_ALERT_URL", f"http://127.0.0.1:{receiver.server_port}/hook")
    ws = make_workspace(
        {
            "eventrunner.toml": POISON_RUNTIME + '[alert]\nurl_env = "ER_TEST_ALERT_URL"\n',
            "pipelines/p.toml": POISON_PIPELINE,
            "handlers/h.py": POISON_HANDLERS,
            "inbox/good.txt": "fine\n",
            "inbox/poison.txt": "deadly\n",
        }
    )
    log = tmp_path / "serve.err"

    # When serve is started again each time it dies (as a supervisor would), up to 6 times
    deaths = 0
    survivor = None
    for _ in range(6):
        proc = _serve(ws.root, log)
        failure = ws.path(".eventrunner/failures/p.echo/poison.json")

        def settled(proc: subprocess.Popen[str] = proc, failure: Path = failure) -> bool:
            return proc.poll() is not None or (
                failure.exists() and json.loads(failure.read_text()).get("dead") is True
            )

        wait_until(settled, "serve to die or the poison to be dead", timeout=30)
        if proc.poll() is None:
            survivor = proc
            break
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.returncode == 7, log.read_text()
        deaths += 1

    # Then it died once per allowed attempt, and the next start recorded the poison dead
    assert survivor is not None, f"serve died {deaths} times:\n{log.read_text()[-3000:]}"
    try:
        assert deaths == 3
        assert ws.read("starts.log").count("poison") == 3
        record = json.loads(ws.read(".eventrunner/failures/p.echo/poison.json"))
        assert record["attempts"] == 3 and record["dead"] is True
        assert "stopped during this attempt" in record["error"]
        # And the server keeps serving, with the good entity done
        assert survivor.stdout is not None
        line = ""
        while not line.startswith("eventrunner: serving "):
            line = survivor.stdout.readline()
            assert line, log.read_text()[-3000:]
        url = line.rsplit(" at ", 1)[1].split()[0]
        wait_until(lambda: ws.exists("out/good.txt"), "the good entity's output")
        status, body = request("GET", url + "/api/pipelines/p/entities/poison")
        assert status == 200 and body["stages"][0]["state"] == "dead", body
        assert survivor.poll() is None
        # And the start that found it dead sent the alert, as for a state that died running
        wait_until(lambda: _AlertReceiver.bodies, "the dead-state alert")
        assert "p.echo poison" in _AlertReceiver.bodies[0]["text"], _AlertReceiver.bodies
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.communicate(timeout=30)
        receiver.shutdown()
        receiver.server_close()
    assert survivor.returncode == 0, log.read_text()[-3000:]
    assert os.path.exists(ws.path("out/good.txt"))
