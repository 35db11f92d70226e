"""Start-up and shutdown of a real `eventrunner serve`: a data folder not created yet, and a
SIGTERM while a server-mode `run` waits for the server to become idle (issue 14, points 13, 14).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_helpers import (
    CHAIN_HANDLERS,
    CHAIN_PIPELINE,
    Server,
    make_workspace,
    read,
    wait_until,
)

from eventrunner.state import fastpath

SLOW_HANDLERS = """\
import time
from pathlib import Path


def slow(ctx, text: str) -> str:
    (Path(__file__).resolve().parent.parent / "started").write_text(ctx.entity_id)
    time.sleep(60)  # far past the grace period: shutdown must not wait for it
    return text
"""

SLOW_PIPELINE = """\
name = "p"

[stages.slow]
handler = "h:slow"
inputs  = { text = "inbox/{name}.txt" }
output  = "out/{name}.txt"
"""


def test_serve_creates_a_missing_data_folder_and_watches_it(tmp_path: Path) -> None:
    # Given a workspace whose data folder does not exist yet, with the watcher on
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": 'data_root = "data/not/yet"\n[runtime]\ndebounce = "20ms"\n'
            'settle = "50ms"\n',
            "pipelines/p.toml": CHAIN_PIPELINE,
            "handlers/h.py": CHAIN_HANDLERS,
        },
    )
    data = ws / "data/not/yet"
    assert not data.exists()
    # When serve starts, it is ready within seconds (it timed out after ~31 s and exited 1)
    with Server(ws, tmp_path / "logs") as server:
        assert server.ready_at - server.started_at < 10
        assert data.is_dir()
        # Then a file dropped into the new folder flows through the pipeline
        (data / "inbox").mkdir()
        (data / "inbox/a.txt").write_text("hello world")
        wait_until(lambda: read(data / "count/a.txt") == "2 words\n", "the chain's output")
        assert "Traceback" not in server.stderr


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_sigterm_while_a_server_mode_run_waits_answers_it_and_exits_within_the_grace(
    tmp_path: Path, executor: str
) -> None:
    # Given a server whose only handler sleeps far past the 1 s shutdown grace
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": f'[runtime]\nshutdown_grace = "1s"\nexecutor = "{executor}"\n',
            "pipelines/p.toml": SLOW_PIPELINE,
            "handlers/h.py": SLOW_HANDLERS,
            "inbox/a.txt": "hello",
        },
    )
    with Server(ws, tmp_path / "logs", "--no-watch") as server:
        wait_until(lambda: (ws / "started").exists(), "the slow handler to start")
        # And a server-mode `run` waiting for the server to become idle
        client = subprocess.Popen(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "run", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = int(str(server.url).rsplit(":", 1)[1])
            wait_until(lambda: _connected(client.pid, port), "the run request's connection")
            # When the server gets SIGTERM
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            code = server.wait(timeout=30)
            took = time.monotonic() - began
            out, err = client.communicate(timeout=10)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    # Then it exits within the grace period plus persistence (it took 122 s)
    assert code == 0, server.stderr
    assert took < 6, f"serve took {took:.1f}s to stop"
    # And the waiting client was answered: the server is shutting down, not "did not answer"
    assert client.returncode == 3, (out, err)
    assert "shutting down" in err
    assert "did not answer" not in err
    # And the abandoned run is not vouched for: no stamp, so the next `run` checks it again
    assert not (ws / ".eventrunner" / fastpath.STAMP).exists()


def _connected(pid: int, port: int) -> bool:
    """True when process `pid` holds an established TCP connection to 127.0.0.1:`port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
            return True
    return False


ALLOCATOR_FILES = {
    "eventrunner.toml": '[runtime]\nexecutor = "process"\n',
    "pipelines/p.toml": """\
        [stages.env]
        handler = "h:env"
        inputs = { t = "inbox/{n}.txt" }
        output = "out/{n}.txt"
        """,
    "handlers/h.py": """\
        import os


        def env(t: str) -> str:
            return os.environ.get("PYTHONMALLOC", "unset")
        """,
}


@pytest.mark.parametrize("chosen", [None, "pymalloc"])
def test_serve_runs_on_glibcs_allocator_unless_one_is_chosen_and_handlers_get_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: str | None
) -> None:
    # Given a workspace whose handler (in a worker process) reports its PYTHONMALLOC
    if chosen is None:
        monkeypatch.delenv("PYTHONMALLOC", raising=False)
    else:
        monkeypatch.setenv("PYTHONMALLOC", chosen)
    root = make_workspace(tmp_path / "ws", ALLOCATOR_FILES)
    with Server(root, tmp_path / "logs") as server:
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        (root / "inbox" / "a.txt").parent.mkdir(exist_ok=True)
        (root / "inbox" / "a.txt").write_text("x")
        seen = wait_until(lambda: read(root / "out" / "a.txt"), "the handler's output")
    # Then serve re-executed itself (same PID) on glibc's allocator only when none was chosen,
    # and the handler's process was started with the allocator the user had
    assert (b"eventrunner_malloc" in cmdline) is (chosen is None)
    assert seen == (chosen or "unset")
