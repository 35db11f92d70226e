"""Slow, idle and vanishing senders (issue 14, point 4), with real sockets on 127.0.0.1.

The in-process tests run the app behind the same GuardedSite `serve` uses, with timeouts of a
few hundred milliseconds; the flood test runs a real `eventrunner serve` with a small open-file
limit and hundreds of half-sent requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from serve_helpers import make_workspace, request, wait_until

from eventrunner.cli.logs import RateLimitFilter
from eventrunner.server.app import create_app
from eventrunner.server.guard import GUARD, ConnectionGuard, GuardedSite, runner_args
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"
webhook = { allow_unsigned = true }
"""

CONFIG = """\
data_root = "data"

[server]
header_timeout = "300ms"
body_timeout = "300ms"
idle_timeout = "500ms"
max_connections = 8
"""

POST_HEAD = "POST /hooks/p/inbox?name={name} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"


@dataclass
class Site:
    host: str
    port: int
    data: Path
    guard: ConnectionGuard

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    ws = make_workspace(tmp_path / "ws", {"eventrunner.toml": CONFIG, "pipelines/p.toml": PIPELINE})
    (ws / "data").mkdir()
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        app = create_app(rt)
        runner = web.AppRunner(app, access_log=None, **runner_args(rt.settings.server))
        await runner.setup()
        try:
            guarded = GuardedSite(runner, app[GUARD], host="127.0.0.1", port=0)
            await guarded.start()
            assert guarded._server is not None
            port = guarded._server.sockets[0].getsockname()[1]
            yield Site("127.0.0.1", port, ws / "data", app[GUARD])
        finally:
            await runner.cleanup()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def answer(reader: asyncio.StreamReader, within: float = 3.0) -> bytes:
    """Everything the server sends until it closes the connection (fails after `within` s)."""
    return await asyncio.wait_for(reader.read(), within)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.1) -> None:
    """Send `data` one byte at a time, `every` seconds apart, until done or the peer closed."""
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


async def test_headers_trickled_byte_by_byte_are_cut_off_after_the_header_timeout(
    site: Site,
) -> None:
    reader, writer = await site.connect()
    head = POST_HEAD.format(name="slow", size=2).encode() + b"hi"
    sender = asyncio.create_task(trickle(writer, head))
    began = time.monotonic()
    got = await answer(reader)
    sender.cancel()
    writer.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert time.monotonic() - began < 2  # 300 ms and a little, not "accepted after 60 s"
    assert not (site.data / "inbox/slow.txt").exists()


async def test_body_trickled_byte_by_byte_is_answered_408_and_not_stored(site: Site) -> None:
    reader, writer = await site.connect()
    writer.write(POST_HEAD.format(name="drip", size=40).encode())
    sender = asyncio.create_task(trickle(writer, b"x" * 40))
    got = await answer(reader)
    sender.cancel()
    writer.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert not (site.data / "inbox/drip.txt").exists()


async def test_connections_over_the_limit_are_answered_503_and_served_once_idle_ones_expire(
    site: Site,
) -> None:
    # Given as many half-sent requests as max_connections allows
    idle = [await site.connect() for _ in range(8)]
    for _, writer in idle:
        writer.write(b"POST /hooks/p/inbox?name=x HTTP/1.1\r\nHost:")
        await writer.drain()
    # When one more sender connects, Then it is answered 503 with Retry-After at once
    reader, writer = await site.connect()
    refused = await answer(reader, within=1.0)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused, refused
    # And once the half-sent ones ran out of header time, a delivery gets through
    for r, w in idle:
        assert (await answer(r)).startswith(b"HTTP/1.1 408")
        w.close()
    reader, writer = await site.connect()
    writer.write(POST_HEAD.format(name="late", size=2).encode() + b"ok")
    got = await answer(reader)  # the idle timeout closes it after the answer
    writer.close()
    assert got.startswith(b"HTTP/1.1 202"), got


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(site: Site) -> None:
    reader, writer = await site.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    began = time.monotonic()
    got = await answer(reader)
    writer.close()
    assert got.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - began < 2.5  # idle_timeout 500 ms (aiohttp's default: an hour)


async def test_client_aborting_mid_body_is_no_error_and_no_traceback(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, writer = await site.connect()
    writer.write(POST_HEAD.format(name="gone", size=100).encode() + b"abc")
    await writer.drain()
    # Given the server is reading the body (its request has started), When the client goes away
    await until(lambda: any(c.state == "request" for c in site.guard.by_transport.values()))
    writer.transport.abort()
    await until(lambda: any("client closed" in r.getMessage() for r in caplog.records))
    # Then it is noted quietly: no ERROR, no traceback
    assert any("client closed" in r.getMessage() for r in caplog.records), caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert not (site.data / "inbox/gone.txt").exists()


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("eventrunner.x", logging.ERROR, __file__, 1, msg, None, None)


def test_identical_log_lines_are_let_through_a_few_times_per_window() -> None:
    limit = RateLimitFilter(burst=3, window=0.2)
    same = "socket.accept() out of system resource"
    assert sum(limit.filter(_record(same)) for _ in range(1000)) == 3
    assert limit.filter(_record("a different line"))
    # After the window the line passes again, saying how many were held back
    ends = time.monotonic() + 0.2
    wait_until(lambda: time.monotonic() >= ends, "the window to end")
    again = _record(same)
    assert limit.filter(again)
    assert "997 identical lines held back" in again.getMessage()


# -- a real server under a flood of half-sent requests -------------------------------------------


def _small_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_a_flood_of_half_sent_requests_does_not_block_deliveries_or_flood_the_log(
    tmp_path: Path,
) -> None:
    # Given a real server with 400 file descriptors, and a short header timeout
    ws = make_workspace(tmp_path / "ws", {"pipelines/p.toml": PIPELINE})
    (ws / "inbox").mkdir()
    err = tmp_path / "serve.err"
    env = {**os.environ, "EVENTRUNNER_SERVER_HEADER_TIMEOUT": "1s"}
    with open(err, "wb") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err_fh,
            text=True,
            env=env,
            preexec_fn=_small_fd_limit,
        )
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at " in line, err.read_text()
        url = line.rsplit(" at ", 1)[1].split()[0]
        port = int(url.rsplit(":", 1)[1])
        # When 250 connections each send half a request and stall
        for _ in range(250):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /hooks/p/inbox?name=x HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)

        # Then a delivery is answered (no hang), 202 once the stalled ones have been cut off
        def delivered() -> bool:
            try:
                status, _ = request("POST", f"{url}/hooks/p/inbox?name=ok", "body", timeout=5)
            except OSError:  # refused while still sending: the 503 came with a reset
                return False
            assert status in (202, 503), status
            return status == 202

        wait_until(delivered, "a delivery to be accepted", timeout=20, interval=0.2)
        assert (ws / "inbox/ok.txt").exists() or wait_until(
            lambda: (ws / "inbox/ok.txt").exists(), "the delivered file"
        )
        # And the log stays short
        lines = err.read_text().splitlines()
        assert len(lines) < 40, "\n".join(lines[:60])
        assert "Traceback" not in err.read_text()
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
