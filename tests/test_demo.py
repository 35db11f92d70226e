"""`make demo`, the first thing a new user runs: its hints come once it serves, and a busy port
is one line that says how to choose another. Run through real make, bash and serve processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from serve_helpers import request, wait_until

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make_demo(
    demo: Path, port: int, stderr: int | IO[str] = subprocess.PIPE
) -> subprocess.Popen[str]:
    """`make demo` on this interpreter's venv (its install step skipped), in a group of its own."""
    return subprocess.Popen(
        ["make", "-s", "-o", "install", "demo", f"VENV={sys.prefix}", f"DEMO={demo}",
         f"PORT={port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )  # fmt: skip


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_make_demo_on_a_busy_port_fails_in_one_line_and_prints_no_hints(
    tmp_path: Path, busy_port: int
) -> None:
    proc = make_demo(tmp_path / "demo", busy_port)
    out, err = proc.communicate(timeout=300)

    assert proc.returncode != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("eventrunner:")]
    assert lines == [
        f"eventrunner: port {busy_port} on 127.0.0.1 is already in use (another eventrunner "
        "serve, or another program): choose another with --port N, [server] port or "
        "EVENTRUNNER_SERVER_PORT (make demo PORT=N)"
    ], err
    assert "In another terminal" not in out


def test_serve_on_a_busy_port_exits_2_with_one_line(tmp_path: Path, busy_port: int) -> None:
    ws = tmp_path / "echo"
    shutil.copytree(REPO / "examples" / "echo", ws)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventrunner.cli.main",
            "-w",
            str(ws),
            "serve",
            "--port",
            str(busy_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"port {busy_port}" in proc.stderr and "--port" in proc.stderr


def test_make_demo_prints_its_hints_once_the_server_is_ready(tmp_path: Path) -> None:
    # Given `make demo` on a port the system picks (the hints name the URL serve bound)
    with open(tmp_path / "demo.err", "w") as err:  # serve logs there: never a full pipe
        proc = make_demo(tmp_path / "demo", 0, err)
    lines: list[str] = []
    ready_when_hinted: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Now serving"):
                url = line.split(" on ", 1)[1].split(". In another")[0]
                ready_when_hinted.append(request("GET", url + "/readyz")[0])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # When the hints appear
        wait_until(lambda: any(x.startswith("Stop with Ctrl-C") for x in lines), "the hints", 300)
        # Then the serving line came first, and the server was ready when they were printed
        serving = next(i for i, x in enumerate(lines) if x.startswith("eventrunner: serving "))
        hints = next(i for i, x in enumerate(lines) if x.startswith("Now serving"))
        assert serving < hints
        assert ready_when_hinted == [200]
        assert sum(x.startswith("Now serving") for x in lines) == 1
    finally:
        # Ctrl-C, as a user would: the whole foreground group gets SIGINT
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
