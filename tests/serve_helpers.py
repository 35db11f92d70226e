"""Helpers for serve tests: a real `eventrunner serve` subprocess on port 0, waits with deadlines.

Nothing here sleeps to synchronise: every wait polls a condition and fails with a message when
its deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEADLINE = 15.0  # seconds any single wait may take before the test fails
POLL = 0.01

# Short timings so that tests wait on milliseconds, not on the production defaults.
FAST_RUNTIME = """\
[runtime]
debounce = "20ms"
settle = "100ms"
retry_sweep_interval = "200ms"
shutdown_grace = "10s"
concurrency = 2
"""

# A two-stage chain: inbox/{name}.txt -> up/{name}.txt -> count/{name}.txt
CHAIN_PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"

[stages.upper]
handler = "h:upper"
inputs  = { text = "inbox/{name}.txt" }
output  = "up/{name}.txt"

[stages.count]
handler = "h:count"
inputs  = { text = "up/{name}.txt" }
output  = "count/{name}.txt"
"""

# Every handler run appends one JSON line {"stage", "entity", "text"} to runs.log at the
# workspace root: execution counts that do not depend on eventrunner's own bookkeeping.
LOG_HELPER = """\
import json
from pathlib import Path

RUNS = Path(__file__).resolve().parent.parent / "runs.log"


def _log(stage, ctx, text=None):
    with open(RUNS, "a") as fh:
        fh.write(json.dumps({"stage": stage, "entity": ctx.entity_id, "text": text}) + "\\n")
"""

CHAIN_HANDLERS = (
    LOG_HELPER
    + """

def upper(ctx, text: str) -> str:
    _log("upper", ctx, text)
    return text.upper()


def count(ctx, text: str) -> str:
    _log("count", ctx, text)
    return f"{len(text.split())} words\\n"
"""
)


def make_workspace(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: text (dedented)} under root; returns root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def chain_workspace(
    root: Path, extra: dict[str, str] | None = None, *, runtime: str = FAST_RUNTIME
) -> Path:
    """The two-stage chain workspace with fast runtime settings, plus `extra` files."""
    files = {
        "eventrunner.toml": runtime,
        "pipelines/p.toml": CHAIN_PIPELINE,
        "handlers/h.py": CHAIN_HANDLERS,
        **(extra or {}),
    }
    return make_workspace(root, files)


def runs(root: Path) -> list[dict[str, Any]]:
    """Every handler run logged so far (see LOG_HELPER)."""
    path = root / "runs.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def count_runs(root: Path, stage: str, entity: str) -> int:
    return sum(1 for r in runs(root) if r["stage"] == stage and r["entity"] == entity)


def read(path: Path) -> str | None:
    """Text of a file, or None while it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = POLL
) -> T:
    """Poll `condition` until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(
    condition: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = POLL
) -> T:
    """Async `wait_until`: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def until_async(
    condition: Callable[[], Awaitable[T]], what: str, timeout: float = DEADLINE
) -> T:
    """Like `until` for a coroutine condition."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL)


def cli(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`eventrunner -w ROOT ARGS...` as a subprocess (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def request(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
        exc.close()
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


class Server:
    """A real `eventrunner -w ROOT serve --port 0` subprocess.

    `start()` returns once the "serving ... at URL" line is printed (after the start-up
    reconcile); stdout lines are collected by a thread, stderr goes to a file outside the
    workspace. Leaving the `with` block kills the process if it is still running.
    """

    def __init__(self, root: Path, log_dir: Path, *args: str) -> None:
        self.root = root
        self.args = args
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"serve-{time.monotonic_ns()}.err"
        self.lines: list[str] = []
        self.url: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.ready_at = 0.0
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.kill()
            raise

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, timeout: float = 30) -> Server:
        with open(self.stderr_path, "wb") as err:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventrunner.cli", "-w", str(self.root), "serve",
                 "--port", "0", *self.args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = wait_until(self._serving_line, "the serving line", timeout)
        self.ready_at = time.monotonic()
        assert line is not None
        self.url = line.rsplit(" at ", 1)[1].split()[0]
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _serving_line(self) -> str | None:
        for line in self.lines:
            if line.startswith("eventrunner: serving "):
                return line
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.stderr}")
        return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        assert self.url is not None
        return request("GET", self.url + path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        assert self.url is not None
        return request("POST", self.url + path, body)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


class EventStream:
    """Reads GET /api/events in a thread; `events` holds (kind, data) as they arrive."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self._conn.connect()
        self._sock = self._conn.sock
        self._conn.request("GET", "/api/events")
        self._resp = self._conn.getresponse()
        assert self._resp.status == 200, self._resp.status
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.connected.wait(DEADLINE)

    def _read(self) -> None:
        kind = "message"
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            while True:
                raw = self._resp.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in list(self.events) if k == kind]

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serving(root: Path, log_dir: Path, *args: str) -> Iterator[Server]:
    """`with serving(ws, tmp) as server:` — started, and killed on the way out."""
    server = Server(root, log_dir, *args)
    try:
        yield server.start()
    finally:
        server.kill()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
