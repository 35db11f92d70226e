"""Crash durability of the webhook intake: what was acknowledged survives a SIGKILL.

A real `eventrunner serve` takes a burst of concurrent signed deliveries and is killed with
SIGKILL as soon as the last answer arrives, while bodies may still be on their way from the
journal to their files and handlers may be running. After a restart every acknowledged body
must be at its path with its content, and processed: its stage output exists and is fresh.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from standardwebhooks.webhooks import Webhook

SECRET_ENV = "ER_TEST_CRASH_SECRET"
SECRET = "whsec_" + base64.b64encode(b"crash test key of thirty-two b..").decode()
DELIVERIES = 200

FILES = {
    "eventrunner.toml": """\
        data_root = "data"
        """,
    "pipelines/intake.toml": """\
        name = "intake"

        [sources.event]
        pattern = "events/{item}.json"
        webhook = { secret_env = "ER_TEST_CRASH_SECRET" }

        [stages.upper]
        handler = "intake:upper"
        inputs  = { body = "events/{item}.json" }
        output  = "upper/{item}.txt"
        """,
    "handlers/intake.py": """\
        def upper(body: str) -> str:
            return body.upper()
        """,
}


def body_for(item: str) -> bytes:
    return json.dumps({"item": item, "pad": item * (len(item) % 5 + 1)}).encode()


def sign(body: bytes) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(time.time()), tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, stamp, body.decode()),
    }


@dataclass
class Served:
    """A running `eventrunner serve` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str


def serve(ws: Path, log: Path) -> Served:
    """Start `eventrunner -w WS serve --port 0`; return once it prints its ready line."""
    out = log.with_suffix(".out")
    with out.open("wb") as stdout, log.with_suffix(".err").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "serve", "--port", "0"],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, SECRET_ENV: SECRET},
        )
    deadline = time.monotonic() + 30
    while not (m := re.search(rb"serving .* at (http://\S+)", out.read_bytes())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(log.with_suffix(".err").read_text())
        time.sleep(0.02)
    return Served(proc, m.group(1).decode())


def kill(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(10)


async def deliver_burst(url: str) -> dict[str, bytes]:
    """POST every delivery at once; return {item: body} of those answered 202."""
    acked: dict[str, bytes] = {}
    connector = aiohttp.TCPConnector(limit=DELIVERIES)
    async with aiohttp.ClientSession(url, connector=connector) as http:

        async def one(item: str) -> None:
            body = body_for(item)
            async with http.post(
                "/hooks/intake/event", data=body, headers=sign(body), params={"item": item}
            ) as resp:
                if resp.status == 202:
                    answer = await resp.json()
                    assert answer["path"] == f"events/{item}.json"
                    acked[item] = body

        await asyncio.gather(*(one(f"e{i:03d}") for i in range(DELIVERIES)))
    return acked


async def fresh_states(url: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession(url) as http,
        http.get(
            "/api/pipelines/intake/entities", params={"stage": "upper", "limit": "1000"}
        ) as resp,
    ):
        assert resp.status == 200
        page = await resp.json()
    return {row["entity"]: row["state"] for row in page["entities"]}


async def test_every_acknowledged_delivery_survives_sigkill_and_is_processed(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    for rel, text in FILES.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(textwrap.dedent(text))
    data = ws / "data"
    data.mkdir()
    # Given a server taking a burst of concurrent deliveries
    first = serve(ws, tmp_path / "first")
    try:
        acked = await deliver_burst(first.url)
    finally:
        # When it is killed the moment the last answer arrived
        kill(first)
    assert len(acked) == DELIVERIES, f"only {len(acked)} of {DELIVERIES} acknowledged"

    # Then after a restart every acknowledged body is in place and processed
    second = serve(ws, tmp_path / "second")
    try:
        deadline = time.monotonic() + 30
        while True:
            states = await fresh_states(second.url)
            if all(states.get(item) == "fresh" for item in acked):
                break
            assert time.monotonic() < deadline, {
                s: n for s, n in states.items() if n != "fresh"
            } or f"{len(states)} states"
            await asyncio.sleep(0.05)
        for item, body in acked.items():
            assert (data / f"events/{item}.json").read_bytes() == body, item
            assert (data / f"upper/{item}.txt").read_bytes() == body.upper(), item
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0
    # And the CLI agrees once the server is gone: all fresh, nothing else, and the temp files
    # the kill left behind were swept at the restart.
    status = subprocess.run(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts = json.loads(status.stdout)["pipelines"]["intake"]["stages"]["upper"]
    assert counts["fresh"] == DELIVERIES
    assert sum(counts.values()) == DELIVERIES
    assert not [p.name for p in data.rglob(".er-tmp-*")]
