"""Alerts (issue 10.9): a state going dead under `serve` posts to a webhook read from a secret,
retried with backoff, never blocking the engine; a `dead` event on /api/events; the URL never
in logs or API answers. The webhook is a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from serve_helpers import make_workspace, read, until

from eventrunner.server.app import create_app
from eventrunner.service.runtime import Runtime
from eventrunner.service.watch import FileChange
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]

URL_ENV = "ER_TEST_ALERT_URL"
TOKEN = "T0SECRET/B0SECRET/xoxbSecretPathToken42"  # what a Slack webhook URL's path holds

CONFIG = f"""\
[runtime]
debounce = "20ms"
settle = "100ms"
retry_sweep_interval = "1h"
concurrency = 2

[alert]
url_env = "{URL_ENV}"
max_attempts = 3
backoff = "200ms"
max_backoff = "1s"
timeout = "5s"
"""

PIPELINE = """\
name = "p"
[sources.inbox]
pattern = "inbox/{name}.txt"
[stages.s]
handler = "h:check"
inputs  = { text = "inbox/{name}.txt" }
output  = "out/{name}.txt"
retry   = { max_attempts = 3, backoff = "1s" }
"""

HANDLERS = """\
from eventrunner import PermanentError


def check(text: str) -> str:
    if text.startswith("bad"):
        raise PermanentError("cannot parse " + text.strip())
    return text.upper()
"""


class Receiver:
    """The alert webhook: records each request; answers `statuses` in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[float, str, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), request.path, await request.json()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status == 200 else "server error")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/services/{tail:.*}", self.handle)
        return app


async def _receiver(aiohttp_server: AiohttpServer, statuses: list[int]) -> tuple[Receiver, str]:
    receiver = Receiver(statuses)
    server = await aiohttp_server(receiver.app())
    assert server.host == "127.0.0.1"
    return receiver, str(server.make_url(f"/services/{TOKEN}"))


def _drop(rt: Runtime, ws: Path, name: str, text: str) -> None:
    """A file arrives (told to the runtime as the watcher would: this runtime does not watch)."""
    (ws / "inbox").mkdir(exist_ok=True)
    (ws / f"inbox/{name}.txt").write_text(text)
    rt.on_change(FileChange("added", f"inbox/{name}.txt"))


async def _read_events(
    client: TestClient[Any, Any], seen: list[tuple[str, dict[str, Any]]]
) -> None:
    async with client.get("/api/events") as stream:
        kind = ""
        while True:
            line = (await stream.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((kind, json.loads(line.removeprefix("data: "))))


async def test_a_dead_state_is_alerted_with_a_backoff_retry_and_streamed_as_a_dead_event(
    tmp_path: Path,
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a webhook that first answers 500, then 200, named by the secret [alert] reads
    receiver, url = await _receiver(aiohttp_server, [500])
    monkeypatch.setenv(URL_ENV, url)
    ws = make_workspace(
        tmp_path / "ws",
        {"eventrunner.toml": CONFIG, "pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS},
    )
    caplog.set_level(logging.DEBUG, logger="eventrunner")
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        seen: list[tuple[str, dict[str, Any]]] = []
        reader = asyncio.create_task(_read_events(client, seen))
        await until(lambda: rt.events._listeners and len(rt.events._listeners) >= 4, "SSE")
        # When a state fails for good
        _drop(rt, ws, "x", "bad input\n")
        # Then the webhook is posted to twice: a 500, then, after the backoff, a 200
        await until(lambda: len(receiver.requests) == 2, "the alert, tried twice", timeout=10)
        (t1, path1, body1), (t2, path2, body2) = receiver.requests
        assert t2 - t1 >= 0.2 * 0.9  # the backoff (timer resolution aside)
        assert path1 == path2 == f"/services/{TOKEN}"
        assert body1 == body2 and set(body1) == {"text", "content"}
        assert body1["text"] == body1["content"]
        assert (
            "p.s x is dead after 1 attempt(s): PermanentError: cannot parse bad input"
            in (body1["text"])
        )
        await until(lambda: rt.alerts is not None and rt.alerts.sent == 1, "delivered")
        # And the event stream carried `failed` (dead) then `dead` for the state
        await until(lambda: any(k == "dead" for k, _ in seen), "the dead event")
        mine = [(k, d) for k, d in seen if d.get("entity") == "x" and k in ("failed", "dead")]
        assert [k for k, _ in mine] == ["failed", "dead"]
        assert mine[1][1]["stage"] == "p.s" and mine[1][1]["attempts"] == 1
        assert mine[1][1]["error"] == "PermanentError: cannot parse bad input"
        reader.cancel()
        # And the URL (nor its secret path) is in no log line and no API answer
        answers = []
        for path in (
            "/api/pipelines",
            "/api/pipelines/p/status",
            "/api/pipelines/p/entities",
            "/api/pipelines/p/entities/x",
            "/metrics",
            "/api/openapi.json",
        ):
            resp = await client.get(path)
            assert resp.status == 200, path
            answers.append(await resp.text())
        said = caplog.text + "".join(answers) + json.dumps(seen)
        assert "alert attempt 1 failed (HTTP 500)" in caplog.text
        for secret in (url, TOKEN, "xoxbSecretPathToken42"):
            assert secret not in said
        await client.close()


async def test_an_unreachable_webhook_is_tried_a_bounded_number_of_times_and_never_blocks_work(
    tmp_path: Path,
    aiohttp_server: AiohttpServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a webhook that always answers 500
    receiver, url = await _receiver(aiohttp_server, [500] * 10)
    monkeypatch.setenv(URL_ENV, url)
    config = CONFIG.replace('backoff = "200ms"', 'backoff = "500ms"')
    ws = make_workspace(
        tmp_path / "ws",
        {"eventrunner.toml": config, "pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS},
    )
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        # When a state goes dead, and good work arrives while its alert is being retried
        _drop(rt, ws, "x", "bad\n")
        await until(lambda: len(receiver.requests) == 1, "the first alert attempt")
        _drop(rt, ws, "ok", "fine\n")
        # Then the good work is done before the alert gives up (the engine does not wait)
        await until(lambda: read(ws / "out/ok.txt") == "FINE\n", "the good work")
        assert rt.alerts is not None and rt.alerts.failed == 0
        # And the alert is tried max_attempts (3) times in all, then given up, logged
        await until(lambda: rt.alerts.failed == 1, "the alert given up", timeout=10)
        assert len(receiver.requests) == 3
        assert "not delivered after 3 attempt(s)" in caplog.text
        assert url not in caplog.text and TOKEN not in caplog.text


def _cli(root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != URL_ENV}
    return subprocess.run(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_a_bad_alert_config_is_a_clear_error_naming_the_file_and_field(tmp_path: Path) -> None:
    # Given an [alert] table with a bad attempt count and the URL where its variable's name goes
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": '[alert]\nurl_env = "https://hooks.example/T0/B0/xyzzy"\n'
            "max_attempts = 0\n",
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": HANDLERS,
        },
    )
    # Then validation names each field, exit 2, and never echoes the URL
    res = _cli(ws, "validate", env={})
    assert res.returncode == 2, res
    said = res.stdout + res.stderr
    assert "eventrunner.toml: alert.url_env: must name the environment variable" in said
    assert "eventrunner.toml: alert.max_attempts:" in said
    assert "xyzzy" not in said


def test_serve_refuses_to_start_when_the_alert_url_variable_is_unset_or_not_a_url(
    tmp_path: Path,
) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        {"eventrunner.toml": CONFIG, "pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS},
    )
    # When the variable is unset: one clear line, exit 2
    res = _cli(ws, "serve", "--port", "0", env={})
    assert res.returncode == 2, res
    assert f"eventrunner.toml: alert.url_env: environment variable {URL_ENV} is not set" in (
        res.stderr
    )
    assert "Traceback" not in res.stderr
    # When it holds something that is not an http(s) URL: named, its value never shown
    res = _cli(ws, "serve", "--port", "0", env={URL_ENV: "ftp://files.example/secretvalue99"})
    assert res.returncode == 2, res
    assert f"environment variable {URL_ENV} does not hold an http(s) URL" in res.stderr
    assert "secretvalue99" not in res.stdout + res.stderr
