"""Secret values never reach recorded errors, logs, events or answers (issue 14, point 3).

The end-to-end test runs a real `eventrunner serve` whose handlers put secrets in exception
messages, chained causes and log lines, then reads every surface a failure shows up on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import Server, make_workspace, wait_until

from eventrunner.core.redact import MASK, RedactingFilter, Redactor

HANDLER_SECRET = "hs-3f9a1c7e5b2d"
TOKEN = "tok-8e1f0a9d2c4b"
HOOK_SECRET = "gh-hook-secret-55aa"

HANDLERS = """\
import os


def leaky(ctx, text: str) -> str:
    key = ctx.secret("ER_TEST_API_KEY")
    ctx.log.warning("calling the API with key %s", key)
    try:
        raise ValueError(f"inner problem with {key!r}")
    except ValueError as exc:
        raise RuntimeError(f"API refused key {key}") from exc


def careless(ctx, text: str) -> str:
    # Not read through ctx.secret: the token and the webhook secret are known to the server.
    raise RuntimeError(
        f"token {os.environ['ER_TEST_TOKEN']} hook {os.environ['ER_TEST_HOOK']}"
    )
"""

PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"
webhook = { secret_env = "ER_TEST_HOOK" }

[stages.leaky]
handler = "h:leaky"
inputs  = { text = "inbox/{name}.txt" }
output  = "leaky/{name}.txt"
retry   = { max_attempts = 2, backoff = "50ms", max_backoff = "50ms" }

[stages.careless]
handler = "h:careless"
inputs  = { text = "inbox/{name}.txt" }
output  = "careless/{name}.txt"
retry   = { max_attempts = 2, backoff = "50ms", max_backoff = "50ms" }
"""


def config(executor: str) -> str:
    return f"""\
[server]
token_env = "ER_TEST_TOKEN"

[runtime]
executor = "{executor}"
retry_sweep_interval = "100ms"
shutdown_grace = "5s"
"""


# -- the redactor ------------------------------------------------------------------------------


def test_redactor_masks_values_and_their_escaped_forms() -> None:
    r = Redactor()
    r.add("line one\nline two")
    r.add("abc")  # too short to be a secret: left alone
    text = r.redact('raw line one\nline two, json "line one\\nline two", abc')
    assert "line one" not in text and text.count(MASK) == 2 and "abc" in text


def test_redactor_masks_exception_chains_in_place() -> None:
    r = Redactor()
    r.add("s3cr3t-value")
    try:
        try:
            raise KeyError("s3cr3t-value")
        except KeyError as inner:
            raise RuntimeError("outer s3cr3t-value") from inner
    except RuntimeError as exc:
        r.redact_exception(exc)
        assert str(exc) == f"outer {MASK}"
        assert MASK in str(exc.__cause__)


def test_logging_filter_masks_message_arguments_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from eventrunner.core.redact import remember_secret

    remember_secret("filter-secret-123")
    logger = logging.getLogger("eventrunner.test.redact")
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("boom filter-secret-123")
        except ValueError:
            logger.exception("with %s", "filter-secret-123")
    finally:
        logger.removeHandler(handler)
    assert records and all("filter-secret-123" not in line for line in records)
    assert MASK in records[0]


# -- every surface of a real server --------------------------------------------------------------


def _get(url: str, path: str) -> str:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


def _post(url: str, path: str) -> str:
    req = urllib.request.Request(
        url + path,
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


def _failures(url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(_get(url, "/api/pipelines/p/status"))[
        "recent_failures"
    ]
    return found


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_secrets_in_handler_errors_and_logs_are_redacted_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str
) -> None:
    monkeypatch.setenv("ER_TEST_API_KEY", HANDLER_SECRET)
    monkeypatch.setenv("ER_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("ER_TEST_HOOK", HOOK_SECRET)
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": config(executor),
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": HANDLERS,
        },
    )
    surfaces: dict[str, str] = {}
    with Server(ws, tmp_path / "logs") as server:
        url = str(server.url)
        # Given handlers that fail with secrets in their messages, causes and log lines
        (ws / "inbox").mkdir()
        (ws / "inbox/a.txt").write_text("hello")
        wait_until(
            lambda: sum(f.get("attempts") == 2 for f in _failures(url)) == 2,
            "both stages to fail twice",
        )
        # When every surface is read
        surfaces["status"] = _get(url, "/api/pipelines/p/status")
        surfaces["pipelines"] = _get(url, "/api/pipelines")
        surfaces["entities"] = _get(url, "/api/pipelines/p/entities")
        surfaces["explain"] = _get(url, "/api/pipelines/p/entities/a")
        surfaces["metrics"] = _get(url, "/metrics")
        if executor == "thread":  # the report is made on the server, whatever the executor
            run = subprocess.run(
                [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "run", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            surfaces["server run"] = run.stdout + run.stderr
        with Stream(url) as stream:
            surfaces["retry"] = _post(url, "/api/pipelines/p/retry")
            wait_until(lambda: stream.text.count("event: failed") >= 2, "failed events")
            surfaces["events"] = stream.text
        assert server.stop() == 0
        surfaces["stderr"] = server.stderr
    # (without a server: dead states cleared, both handlers fail again in a local run)
    for args in (["retry"], ["-v", "run", "--json"]) if executor == "thread" else ():
        local = subprocess.run(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        surfaces[f"local {args[-1]}"] = local.stdout + local.stderr
    if executor == "thread":
        assert '"failed": 2' in surfaces["local --json"], surfaces["local --json"]
        assert f"token {MASK} hook {MASK}" in surfaces["local --json"]
    for path in (ws / ".eventrunner").rglob("*"):
        if path.is_file():
            surfaces[str(path.relative_to(ws))] = path.read_bytes().decode(errors="replace")
    # Then no secret is anywhere, and the failures still say what happened
    for name, text in surfaces.items():
        for secret in (HANDLER_SECRET, TOKEN, HOOK_SECRET):
            assert secret not in text, f"{secret} leaked in {name}"
    assert f"API refused key {MASK}" in surfaces["status"]
    assert f"token {MASK} hook {MASK}" in surfaces["explain"]
    assert f"calling the API with key {MASK}" in surfaces["stderr"]
    assert any("failures" in name for name in surfaces)  # the failure records were read


class Stream:
    """GET /api/events with the bearer token, read in a thread into `text`."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self._conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
        self._resp = self._conn.getresponse()
        assert self._resp.status == 200
        self.text = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_until(lambda: ": connected" in self.text, "the event stream")

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            while line := self._resp.readline():
                self.text += line.decode()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._conn.close()
