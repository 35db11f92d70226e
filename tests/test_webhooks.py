"""Webhook intake over HTTP: signatures, idempotency, hostile entity ids, size limits, secrets.

Most tests drive `create_app(runtime)` through aiohttp's test client on a real workspace in
tmp_path; the secrets test runs a real `eventrunner serve` subprocess.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook
from yarl import URL

from eventrunner.core.errors import ConfigError
from eventrunner.run.events import Changed, Event
from eventrunner.server.app import create_app
from eventrunner.server.keys import SPOOL
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

SECRET_ENV = "ER_TEST_HOOK_SECRET"
GITHUB_ENV = "ER_TEST_GITHUB_SECRET"
HANDLER_ENV = "ER_TEST_HANDLER_SECRET"
SECRET = "whsec_" + base64.b64encode(b"test key for the intake: 32 byte").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the key being rotated away from.").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody else's key, not ours...").decode()
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
HANDLER_SECRET = "handler-secret-5f2c9e0d7a41"

PIPELINE = """\
name = "hooks"

[sources.signed]
pattern = "inbox/{item:[a-z0-9-]{1,40}}.json"
webhook = { secret_env = "ER_TEST_HOOK_SECRET" }

[sources.github]
pattern = "gh/{delivery}.txt"
webhook = { secret_env = "ER_TEST_GITHUB_SECRET" }

[sources.drops]
pattern = "drops/{name}"
webhook = { allow_unsigned = true, max_body = 64 }

[sources.big]
pattern = "big/{name}.bin"
webhook = { secret_env = "ER_TEST_HOOK_SECRET", max_body = 4194304 }

[stages.upper]
handler = "hooks:upper"
inputs  = { body = "inbox/{item}.json" }
output  = "out/{item}.txt"
"""

HANDLERS = """\
import hashlib
import hmac
from pathlib import Path


def _log(stage, key):
    with open(Path(__file__).resolve().parent.parent / "runs.log", "a") as fh:
        fh.write(f"{stage} {key}\\n")


def upper(ctx, body: str) -> str:
    _log("upper", ctx.entity_id)
    mac = hmac.new(ctx.secret("ER_TEST_HANDLER_SECRET").encode(), body.encode(), hashlib.sha256)
    return body.upper() + "\\n" + mac.hexdigest()[:16] + "\\n"
"""

CONFIG = """\
data_root = "data"

[server]
body_limit = 4096
"""


def expected_output(body: bytes) -> str:
    import hashlib
    import hmac

    mac = hmac.new(HANDLER_SECRET.encode(), body, hashlib.sha256).hexdigest()[:16]
    return body.decode().upper() + "\n" + mac + "\n"


def make_ws(root: Path, pipeline: str = PIPELINE, config: str = CONFIG) -> Path:
    files = {
        "eventrunner.toml": config,
        "pipelines/hooks.toml": pipeline,
        "handlers/hooks.py": HANDLERS,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    (root / "data").mkdir(exist_ok=True)
    return root


def sign(
    body: bytes,
    secret: str = SECRET,
    msg_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers made by the reference package."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(time.time() if timestamp is None else timestamp), tz=UTC)
    signature = Webhook(secret).sign(msg_id, stamp, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
    }


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def runs(ws: Path) -> list[str]:
    log = ws / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@dataclass
class Server:
    """An in-process app on a runtime, with its workspace."""

    ws: Path
    rt: Runtime
    client: TestClient[Any, Any]

    @property
    def data(self) -> Path:
        return self.ws / "data"

    async def post(
        self,
        source: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        **query: str,
    ) -> aiohttp.ClientResponse:
        return await self.client.post(
            f"/hooks/hooks/{source}", data=body, headers=headers, params=query
        )


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(GITHUB_ENV, GITHUB_SECRET)
    monkeypatch.setenv(HANDLER_ENV, HANDLER_SECRET)


@pytest.fixture
async def server(
    tmp_path: Path, aiohttp_client: AiohttpClient, secrets_env: None
) -> AsyncIterator[Server]:
    ws = make_ws(tmp_path / "ws")
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        try:
            yield Server(ws, rt, client)
        finally:
            await client.close()  # the spool drains before the runtime stops


# -- signatures --------------------------------------------------------------------------------


async def test_signed_post_is_acknowledged_with_entity_path_and_event_id(server: Server) -> None:
    body = b'{"hello": "world"}'
    resp = await server.post("signed", body, sign(body), item="a1")
    assert resp.status == 202
    answer = await resp.json()
    assert answer["entity"] == "a1"
    assert answer["path"] == "inbox/a1.json"
    assert re.fullmatch(r"[0-9a-f]{16,}", answer["event_id"])
    # Durable in the spool's journal when acknowledged; materialised at its path right after.
    await eventually(lambda: (server.data / "inbox/a1.json").exists())
    assert (server.data / "inbox/a1.json").read_bytes() == body
    await eventually(lambda: (server.data / "out/a1.txt").exists())
    assert (server.data / "out/a1.txt").read_text() == expected_output(body)


async def test_a_second_signature_in_the_header_during_rotation_is_accepted(
    server: Server,
) -> None:
    body = b'{"n": 1}'
    headers = sign(body)
    other = sign(body, OTHER_SECRET, headers["webhook-id"], float(headers["webhook-timestamp"]))
    headers["webhook-signature"] = f"{other['webhook-signature']} {headers['webhook-signature']}"
    resp = await server.post("signed", body, headers, item="rot")
    assert resp.status == 202, await resp.text()


async def test_two_secrets_in_the_variable_accept_either_while_rotating(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, f"{SECRET} {OLD_SECRET}")
    for i, secret in enumerate((SECRET, OLD_SECRET)):
        body = f'{{"n": {i}}}'.encode()
        resp = await server.post("signed", body, sign(body, secret), item=f"r{i}")
        assert resp.status == 202, await resp.text()
    body = b"{}"
    resp = await server.post("signed", body, sign(body, OTHER_SECRET), item="r2")
    assert resp.status == 401


async def test_tampered_body_is_refused(server: Server) -> None:
    headers = sign(b'{"amount": 1}')
    resp = await server.post("signed", b'{"amount": 1000}', headers, item="t")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    assert not (server.data / "inbox/t.json").exists()


async def test_wrong_secret_is_refused(server: Server) -> None:
    body = b"{}"
    resp = await server.post("signed", body, sign(body, OTHER_SECRET), item="w")
    assert resp.status == 401
    assert not (server.data / "inbox").exists()


@pytest.mark.parametrize("skew", [-301, 301])
async def test_timestamp_outside_five_minutes_is_refused(server: Server, skew: int) -> None:
    body = b"{}"
    resp = await server.post("signed", body, sign(body, timestamp=time.time() + skew), item="ts")
    assert resp.status == 401
    assert "timestamp" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_each_missing_header_is_refused(server: Server, missing: str) -> None:
    body = b"{}"
    headers = sign(body)
    del headers[missing]
    resp = await server.post("signed", body, headers, item="m")
    assert resp.status == 401
    assert not (server.data / "inbox").exists()


async def test_github_published_test_vector_is_accepted(server: Server) -> None:
    headers = {"X-Hub-Signature-256": GITHUB_SIGNATURE, "X-GitHub-Delivery": "d-1"}
    resp = await server.post("github", b"Hello, World!", headers, delivery="d1")
    assert resp.status == 202, await resp.text()
    await eventually(lambda: (server.data / "gh/d1.txt").exists())
    assert (server.data / "gh/d1.txt").read_bytes() == b"Hello, World!"
    bad = {"X-Hub-Signature-256": GITHUB_SIGNATURE}
    resp = await server.post("github", b"Hello, World?", bad, delivery="d2")
    assert resp.status == 401


def test_webhook_without_secret_or_allow_unsigned_is_refused_at_validation(
    tmp_path: Path,
) -> None:
    pipeline = PIPELINE.replace("{ allow_unsigned = true, max_body = 64 }", "{ max_body = 64 }")
    ws = make_ws(tmp_path / "ws", pipeline)
    with pytest.raises(ConfigError) as info:
        load_workspace(ws)
    assert any(p.field == "sources.drops.webhook" for p in info.value.problems)


async def test_unsigned_post_is_accepted_when_the_source_allows_it(server: Server) -> None:
    resp = await server.post("drops", b"plain", name="note")
    assert resp.status == 202
    await eventually(lambda: (server.data / "drops/note").exists())
    assert (server.data / "drops/note").read_bytes() == b"plain"


# -- idempotency -------------------------------------------------------------------------------


async def test_repeated_webhook_id_answers_duplicate_and_triggers_nothing(server: Server) -> None:
    # Given one delivery that was processed
    body = b'{"v": 1}'
    headers = sign(body)
    assert (await server.post("signed", body, headers, item="dup")).status == 202
    await eventually(lambda: runs(server.ws) == ["upper dup"])
    # When the sender repeats it, and also re-sends the id with a different (signed) body
    again = await server.post("signed", body, headers, item="dup")
    changed = b'{"v": 2}'
    resigned = await server.post(
        "signed", changed, sign(changed, msg_id=headers["webhook-id"]), item="dup"
    )
    # Then both answer 200 duplicate and nothing is stored or run
    for resp in (again, resigned):
        assert resp.status == 200
        assert await resp.json() == {"duplicate": True}
    # A later delivery is materialised in journal order after anything the duplicates could
    # have written: once it is processed, a duplicate would have been too.
    barrier = b'{"v": 3}'
    assert (await server.post("signed", barrier, sign(barrier), item="barrier")).status == 202
    await eventually(lambda: "upper barrier" in runs(server.ws))
    assert (server.data / "inbox/dup.json").read_bytes() == body
    assert runs(server.ws) == ["upper dup", "upper barrier"]
    assert server.client.app[SPOOL].stats["committed"] == 2


async def test_concurrent_duplicates_are_stored_and_processed_once(server: Server) -> None:
    body = b'{"burst": true}'
    headers = sign(body)
    answers = await asyncio.gather(
        *(server.post("signed", body, headers, item="burst") for _ in range(10))
    )
    statuses = sorted(resp.status for resp in answers)
    assert statuses == [200] * 9 + [202]
    bodies = [await resp.json() for resp in answers]
    assert sum(b == {"duplicate": True} for b in bodies) == 9
    await eventually(lambda: (server.data / "out/burst.txt").exists())
    barrier = b"{}"
    assert (await server.post("signed", barrier, sign(barrier), item="after")).status == 202
    await eventually(lambda: "upper after" in runs(server.ws))
    assert runs(server.ws).count("upper burst") == 1
    assert server.client.app[SPOOL].stats["committed"] == 2


# -- hostile entity ids and limits --------------------------------------------------------------

HOSTILE = [
    "name=../x",
    "name=..",
    "name=.",
    "name=%2F",
    "name=a%2Fb",
    "name=%2e%2e%2f",
    "name=%2e%2e%2fescaped",
    "name=..%2F..%2Fetc%2Fpasswd",
    "name=%00",
    "name=a%00b",
    "name=" + "a" * 300,
    "name=",
    "name=.hidden",
    "name=x.tmp",
]


async def test_hostile_entity_ids_are_refused_and_write_nothing(
    server: Server, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    for query in HOSTILE:
        url = URL(f"/hooks/hooks/drops?{query}", encoded=True)
        resp = await server.client.post(url, data=b"evil")
        assert resp.status == 400, (query, resp.status, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "bad_request" and error["message"], query
    # A value failing the pattern's regex (checked after a valid signature).
    for item in ("UPPER", "a.b", "x" * 41):
        resp = await server.post("signed", b"{}", sign(b"{}"), item=item)
        assert resp.status == 400, item
    after = tree(tmp_path)
    assert after == before, sorted(after - before)
    assert not (server.data / "drops").exists()


async def test_symlinks_below_the_data_root_cannot_lead_a_delivery_outside(
    server: Server, tmp_path: Path
) -> None:
    # Given a source folder that is a symlink to a folder outside the data root
    outside = tmp_path / "outside"
    outside.mkdir()
    (server.data / "drops").symlink_to(outside, target_is_directory=True)
    before = tree(tmp_path)
    # When a delivery targets it, Then it is refused and nothing lands outside
    resp = await server.post("drops", b"evil", name="x")
    assert resp.status == 400
    assert "outside the data root" in (await resp.json())["error"]["message"]
    assert tree(tmp_path) == before and list(outside.iterdir()) == []
    # A file symlink is replaced by the delivery (a rename never follows it): nothing outside
    (server.data / "drops").unlink()
    (server.data / "drops").mkdir()
    (outside / "target").write_bytes(b"original")
    link = server.data / "drops" / "link"
    link.symlink_to(outside / "target")
    assert (await server.post("drops", b"delivered", name="link")).status == 202
    await eventually(lambda: not link.is_symlink())
    assert link.read_bytes() == b"delivered"
    assert (outside / "target").read_bytes() == b"original"


async def test_missing_query_parameter_is_a_bad_request(server: Server) -> None:
    resp = await server.post("drops", b"x")
    assert resp.status == 400
    assert "name" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(
    "path", ["/hooks/nope/drops", "/hooks/hooks/nope", "/hooks/hooks/upper", "/hooks/_/drops"]
)
async def test_unknown_pipeline_or_source_is_not_found(server: Server, path: str) -> None:
    resp = await server.client.post(path, data=b"x", params={"name": "n"})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def _chunks(body: bytes, size: int = 16) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def test_body_over_the_source_limit_is_refused_with_and_without_content_length(
    server: Server,
) -> None:
    assert (await server.post("drops", b"x" * 64, name="fits")).status == 202
    resp = await server.post("drops", b"x" * 65, name="sized")
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    chunked = await server.client.post(
        "/hooks/hooks/drops", data=_chunks(b"y" * 200), params={"name": "chunked"}
    )
    assert chunked.status == 413
    assert not (server.data / "drops/sized").exists()
    assert not (server.data / "drops/chunked").exists()


async def test_server_body_limit_applies_to_sources_without_an_override(server: Server) -> None:
    body = b'"' + b"x" * 4100 + b'"'
    resp = await server.post("signed", body, sign(body), item="large")
    assert resp.status == 413
    chunked = await server.client.post(
        "/hooks/hooks/signed", data=_chunks(body, 1000), headers=sign(body), params={"item": "lc"}
    )
    assert chunked.status == 413


async def test_a_source_max_body_above_the_server_limit_takes_a_whole_large_body(
    server: Server,
) -> None:
    # 1 MiB arrives in many reads: the whole body must be read, verified and stored.
    body = (b"0123456789abcdef" * 65536)[: 1 << 20]
    resp = await server.post("big", body, sign(body), name="blob")
    assert resp.status == 202, await resp.text()
    await eventually(lambda: (server.data / "big/blob.bin").exists())
    assert (server.data / "big/blob.bin").read_bytes() == body
    chunked = await server.client.post(
        "/hooks/hooks/big", data=_chunks(body, 65536), headers=sign(body), params={"name": "c"}
    )
    assert chunked.status == 202, await chunked.text()
    await eventually(lambda: (server.data / "big/c.bin").exists())
    assert (server.data / "big/c.bin").read_bytes() == body


# -- secrets never leak (real server process) --------------------------------------------------


@dataclass
class Proc:
    """A running `eventrunner serve` and what it printed."""

    popen: subprocess.Popen[bytes]
    url: str
    out: Path
    err: Path


def start_serve(ws: Path, env: Mapping[str, str], log_dir: Path) -> Proc:
    """Start `eventrunner -w WS serve --port 0` and wait for its ready line."""
    out, err = log_dir / "serve.out", log_dir / "serve.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        popen = subprocess.Popen(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "serve", "--port", "0"],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **env},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if m := re.search(rb"serving .* at (http://\S+)", out.read_bytes()):
            return Proc(popen, m.group(1).decode(), out, err)
        assert popen.poll() is None, err.read_text()
        time.sleep(0.02)
    popen.kill()
    raise AssertionError("server did not become ready: " + err.read_text())


def stop_serve(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGTERM)
    try:
        proc.popen.wait(30)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Proc]]:
    ws = make_ws(tmp_path / "ws")
    env = {SECRET_ENV: SECRET, HANDLER_ENV: HANDLER_SECRET, GITHUB_ENV: GITHUB_SECRET}
    proc = start_serve(ws, env, tmp_path)
    try:
        yield ws, proc
    finally:
        if proc.popen.poll() is None:
            stop_serve(proc)


def secret_forms() -> list[bytes]:
    """Every form a secret could take in a leak: text, base64 key, raw key, hex key."""
    forms = [SECRET, SECRET.removeprefix("whsec_"), GITHUB_SECRET, HANDLER_SECRET]
    raw = base64.b64decode(SECRET.removeprefix("whsec_"))
    return [f.encode() for f in forms] + [raw, raw.hex().encode()]


async def test_secrets_never_appear_in_state_logs_answers_or_metrics(
    served: tuple[Path, Proc],
) -> None:
    ws, proc = served
    answers: list[bytes] = []
    async with aiohttp.ClientSession(proc.url) as http:
        stream = await http.get("/api/events")
        assert stream.status == 200
        bodies = {f"s{i}": f'{{"secret test": {i}}}'.encode() for i in range(3)}
        for item, body in bodies.items():
            async with http.post(
                "/hooks/hooks/signed", data=body, headers=sign(body), params={"item": item}
            ) as r:
                assert r.status == 202
                answers.append(await r.read())
        bad = [
            sign(b"{}", OTHER_SECRET),
            {**sign(b"{}"), "webhook-timestamp": "1"},
            {"X-Hub-Signature-256": "sha256=00"},
        ]
        for headers in bad:
            async with http.post(
                "/hooks/hooks/signed", data=b"{}", headers=headers, params={"item": "x"}
            ) as r:
                assert r.status == 401
                answers.append(await r.read())
        async with http.post(
            "/hooks/hooks/github",
            data=b"Hello, World!",
            headers={"X-Hub-Signature-256": GITHUB_SIGNATURE},
            params={"delivery": "g"},
        ) as r:
            answers.append(await r.read())
        deadline = time.monotonic() + 20
        while not all((ws / "data/out" / f"{item}.txt").exists() for item in bodies):
            assert time.monotonic() < deadline, "handlers did not run"
            await asyncio.sleep(0.05)
        for item, body in bodies.items():
            assert (ws / "data/out" / f"{item}.txt").read_text() == expected_output(body)
        events = b""
        async with asyncio.timeout(10):
            while events.count(b"event: succeeded") < len(bodies):
                events += await stream.content.readline()
        stream.close()
        answers.append(events)
        for path in (
            "/api/pipelines",
            "/api/pipelines/hooks/status",
            "/api/pipelines/hooks/entities",
            "/api/pipelines/hooks/entities/s0",
            "/metrics",
            "/api/openapi.json",
            "/healthz",
            "/readyz",
        ):
            async with http.get(path) as r:
                assert r.status == 200, path
                answers.append(await r.read())
    stop_serve(proc)
    haystacks = {f"answer {i}": a for i, a in enumerate(answers)}
    haystacks["stdout"] = proc.out.read_bytes()
    haystacks["stderr"] = proc.err.read_bytes()
    state_files = [p for p in (ws / ".eventrunner").rglob("*") if p.is_file()]
    assert any(p.parent.name == "spool" for p in state_files), "the spool's files are searched"
    haystacks |= {str(p): p.read_bytes() for p in state_files}
    for where, data in haystacks.items():
        for form in secret_forms():
            assert form not in data, f"a secret appears in {where}"
    assert json.loads(answers[0])["entity"] == "s0"


async def test_a_workspace_whose_data_folder_does_not_exist_yet_starts_and_takes_deliveries(
    tmp_path: Path, aiohttp_client: AiohttpClient, secrets_env: None
) -> None:
    ws = make_ws(tmp_path / "ws")
    (ws / "data").rmdir()
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        server = Server(ws, rt, client)
        body = b'{"first": true}'
        assert (await server.post("signed", body, sign(body), item="first")).status == 202
        await eventually(lambda: (server.data / "out/first.txt").exists())
        await client.close()


async def test_a_delivery_that_creates_its_file_is_reported_added_and_a_second_modified(
    server: Server,
) -> None:
    # Given a subscriber to the runtime's events
    events: list[Event] = []
    server.rt.events.subscribe(events.append)

    def changed() -> list[str]:
        return [e.change for e in events if isinstance(e, Changed)]

    # When a delivery creates inbox/new1.json, Then its `changed` event says "added"
    body = b'{"v": 1}'
    assert (await server.post("signed", body, sign(body), item="new1")).status == 202
    await eventually(lambda: len(changed()) == 1)
    assert changed() == ["added"]
    # When a second delivery replaces it, Then that one says "modified"
    await eventually(lambda: (server.data / "out/new1.txt").exists())
    body = b'{"v": 2}'
    assert (await server.post("signed", body, sign(body), item="new1")).status == 202
    await eventually(lambda: len(changed()) == 2)
    assert changed() == ["added", "modified"]


async def test_a_value_failing_the_constraint_is_refused_with_the_regex_as_written(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    pipeline = """\
        name = "hooks"

        [sources.daily]
        pattern = "logs/{date:\\\\d{4}-\\\\d{2}-\\\\d{2}}.md"
        webhook = { allow_unsigned = true }
        """
    ws = make_ws(tmp_path / "ws", pipeline=pipeline)
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        try:
            resp = await client.post("/hooks/hooks/daily", data=b"x", params={"date": "tuesday"})
            assert resp.status == 400
            message = (await resp.json())["error"]["message"]
        finally:
            await client.close()
    assert r"\d{4}-\d{2}-\d{2}" in message, message
    assert "\\\\" not in message, message
