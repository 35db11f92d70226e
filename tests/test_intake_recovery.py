"""Acknowledged webhooks after crashes and storage faults (issue 14, points 5 and 6).

Point 5 kills a real `eventrunner serve` with SIGKILL after its webhook files were edited and
deleted by hand; point 6 mounts small tmpfs filesystems (root only; skipped elsewhere) and
makes them read-only or full under a running server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from serve_helpers import Server, cli, make_workspace, read, request, wait_until

from eventrunner.server.app import create_app
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"
webhook = { allow_unsigned = true }

[stages.upper]
handler = "h:upper"
inputs  = { text = "inbox/{name}.txt" }
output  = "up/{name}.txt"
"""

HANDLERS = """\
def upper(text: str) -> str:
    return text.upper()
"""

CONFIG = """\
data_root = "data"

[runtime]
debounce = "20ms"
settle = "50ms"
retry_sweep_interval = "200ms"
retry = { backoff = "100ms", max_backoff = "200ms" }
"""


def workspace(root: Path) -> Path:
    return make_workspace(
        root, {"eventrunner.toml": CONFIG, "pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS}
    )


# -- point 5: replay after SIGKILL -------------------------------------------------------------


def test_restart_after_sigkill_keeps_hand_edits_and_deletions_of_webhook_files(
    tmp_path: Path,
) -> None:
    ws = workspace(tmp_path / "ws")
    data = ws / "data"
    data.mkdir()
    with Server(ws, tmp_path / "logs") as server:
        # Given two webhook bodies written to their files and processed
        for name in ("a", "b"):
            status, _ = request("POST", f"{server.url}/hooks/p/inbox?name={name}", f"hook {name}")
            assert status == 202
        wait_until(lambda: read(data / "up/a.txt") == '"HOOK A"', "a processed")
        wait_until(lambda: read(data / "up/b.txt") == '"HOOK B"', "b processed")
        # When a person edits one file and deletes the other, and the edit is processed
        (data / "inbox/a.txt").write_text("edited by hand")
        (data / "inbox/b.txt").unlink()
        wait_until(lambda: read(data / "up/a.txt") == "EDITED BY HAND", "the edit processed")
        # And the server is killed
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    # Then the restart neither reverts the edit nor brings the deleted file back
    with Server(ws, tmp_path / "logs"):
        assert read(data / "inbox/a.txt") == "edited by hand"
        assert not (data / "inbox/b.txt").exists()
        report = cli(ws, "run", "--json")
        assert report.returncode == 0, report.stderr
        assert read(data / "up/a.txt") == "EDITED BY HAND"


# -- point 6: storage faults while running -------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `path` for the block (skips where mount is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write a file in `folder` until its filesystem is full; returns the file."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


@contextlib.asynccontextmanager
async def served(ws: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[TestClient[Any, Any]]:
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        try:
            yield client
        finally:
            await client.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def unwritten(client: TestClient[Any, Any]) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith("eventrunner_intake_unwritten "):
            return float(line.split()[1])
    raise AssertionError("no eventrunner_intake_unwritten metric")


@pytest.mark.parametrize("fault", ["read-only", "full"])
async def test_webhook_not_writable_yet_is_written_once_storage_recovers_while_running(
    tmp_path: Path, aiohttp_client: AiohttpClient, fault: str
) -> None:
    # Given a running server whose data folder is a small filesystem of its own (the journal
    # stays on the workspace's filesystem)
    ws = workspace(tmp_path / "ws")
    with tmpfs(ws / "data", "2m") as data:
        async with served(ws, aiohttp_client) as client:
            # When the data folder cannot be written (read-only, or full)
            filler = None
            if fault == "read-only":
                remount(data, "ro")
            else:
                filler = fill(data)
            resp = await client.post("/hooks/p/inbox", data=b"kept", params={"name": "k"})
            assert resp.status == 202, await resp.text()
            # Then health says degraded and the metric counts the unwritten body
            await until(lambda: _status(client, "/readyz", 503), "readyz to report it")
            body = await (await client.get("/healthz")).json()
            assert body["status"] == "degraded" and body["unwritten_webhooks"] == 1
            assert await unwritten(client) == 1
            # And once storage is back, the body is written while the server runs
            if filler is None:
                remount(data, "rw")
            else:
                filler.unlink()
            await until(_exists(data / "inbox/k.txt"), "the body to be written")
            assert (data / "inbox/k.txt").read_bytes() == b"kept"
            await until(lambda: _status(client, "/readyz", 200), "readyz to recover")
            assert await unwritten(client) == 0


async def test_full_journal_filesystem_answers_503_instead_of_202(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    # Given a whole workspace on a small filesystem, with a server running on it
    with tmpfs(tmp_path / "ws", "4m") as root:
        ws = workspace(root)
        async with served(ws, aiohttp_client) as client:
            first = await client.post("/hooks/p/inbox", data=b"one", params={"name": "one"})
            assert first.status == 202
            # When the filesystem fills up (the journal's last page still has room)
            filler = fill(root)
            resp = await client.post("/hooks/p/inbox", data=b"two", params={"name": "two"})
            # Then the delivery is refused for later instead of acknowledged
            assert resp.status == 503, await resp.text()
            assert resp.headers["Retry-After"]
            # And accepted again once there is room
            filler.unlink()
            again = await client.post("/hooks/p/inbox", data=b"two", params={"name": "two"})
            assert again.status == 202
            await until(_exists(ws / "data/inbox/two.txt"), "the body to be written")


async def _status(client: TestClient[Any, Any], path: str, wanted: int) -> bool:
    return (await client.get(path)).status == wanted


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return path.exists()

    return check
