"""The management API over HTTP: auth, entities, explain, invalidate, hold, retry, SSE, metrics.

Driven through `create_app(runtime)` and aiohttp's test client on a real workspace in
tmp_path; inputs change through signed webhook deliveries, and the tests wait on outputs and
manifests changing (with deadlines). The bind refusal also runs the real CLI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from eventrunner.cli.serve import check_bind
from eventrunner.core.errors import UsageError
from eventrunner.run import queries
from eventrunner.server.app import create_app
from eventrunner.server.keys import STATES
from eventrunner.server.states import StateTable
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

TOKEN_ENV = "ER_TEST_API_TOKEN"
TOKEN = "api-token-7d3f1a9b"
HOOK_ENV = "ER_TEST_API_HOOK_SECRET"
HOOK_SECRET = "whsec_" + base64.b64encode(b"api test key, thirty-two bytes..").decode()

PIPELINE = """\
name = "blog"

[sources.log]
pattern = "logs/{day}.md"
webhook = { secret_env = "ER_TEST_API_HOOK_SECRET" }

[stages.post]
handler = "blog:post"
inputs  = { log = "logs/{day}.md" }
output  = "posts/{day}.md"

[stages.digest]
handler = "blog:digest"
inputs  = { posts = "posts/{day}.md" }
output  = "digest.md"
"""

HANDLERS = """\
from pathlib import Path

from eventrunner import PermanentError

WS = Path(__file__).resolve().parent.parent


def _log(stage, key):
    with open(WS / "runs.log", "a") as fh:
        fh.write(f"{stage} {key}\\n")


def post(ctx, log: str) -> str:
    _log("post", ctx.entity_id)
    if (WS / "flags" / ctx.entity_id).exists():
        raise PermanentError(f"flagged: {ctx.entity_id}")
    return "# " + log.strip().upper() + "\\n"


def digest(posts: dict[str, str]) -> str:
    _log("digest", "_")
    return "".join(f"{day}: {text}" for day, text in sorted(posts.items()))
"""

DAYS = ("a", "b", "c", "d", "e")


def make_ws(root: Path, config: str = 'data_root = "data"\n') -> Path:
    files = {
        "eventrunner.toml": config,
        "pipelines/blog.toml": PIPELINE,
        "handlers/blog.py": HANDLERS,
        **{f"data/logs/{day}.md": f"log {day}\n" for day in DAYS},
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    (root / "flags").mkdir()
    return root


def sign(body: bytes) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(time.time()), tz=UTC)
    signature = Webhook(HOOK_SECRET).sign(msg_id, stamp, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
    }


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll a (sync or async) condition until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


@dataclass
class Api:
    """An in-process app on a runtime, with its workspace and JSON helpers."""

    ws: Path
    rt: Runtime
    client: TestClient[Any, Any]
    headers: dict[str, str]

    def out(self, rel: str) -> str | None:
        path = self.ws / "data" / rel
        return path.read_text() if path.exists() else None

    def runs(self) -> list[str]:
        log = self.ws / "runs.log"
        return log.read_text().splitlines() if log.exists() else []

    async def get(self, path: str, status: int = 200, **query: Any) -> Any:
        resp = await self.client.get(path, params=query, headers=self.headers)
        assert resp.status == status, (path, resp.status, await resp.text())
        assert resp.content_type == "application/json"
        return await resp.json()

    async def post(self, path: str, body: Any, status: int = 200) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {**self.headers, "Content-Type": "application/json"}
        resp = await self.client.post(path, data=data, headers=headers)
        assert resp.status == status, (path, resp.status, await resp.text())
        assert resp.content_type == "application/json"
        return await resp.json()

    async def deliver(self, day: str, text: str) -> None:
        body = text.encode()
        resp = await self.client.post(
            "/hooks/blog/log", data=body, headers=sign(body), params={"day": day}
        )
        assert resp.status == 202, await resp.text()

    async def states(self, stage: str = "post") -> dict[str, str]:
        page = await self.get("/api/pipelines/blog/entities", stage=stage, limit=1000)
        return {row["entity"]: row["state"] for row in page["entities"]}

    async def manifest(self, entity: str, stage: str) -> dict[str, Any]:
        answer = await self.get(f"/api/pipelines/blog/entities/{entity}", stage=stage)
        (row,) = answer["stages"]
        manifest: dict[str, Any] = row["manifest"]
        return manifest

    async def all_fresh(self) -> None:
        """Wait until every state of every stage is fresh and nothing is queued or running."""

        async def settled() -> bool:
            page = await self.get("/api/pipelines/blog/entities", limit=1000)
            status = await self.get("/api/pipelines/blog/status")
            return (
                page["total"] >= len(DAYS) + 1
                and {r["state"] for r in page["entities"]} == {"fresh"}
                and status["queue_depth"] == 0
                and status["running"] == []
            )

        await eventually(settled)


async def start_api(
    ws: Path, aiohttp_client: AiohttpClient, headers: dict[str, str]
) -> AsyncIterator[Api]:
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        try:
            yield Api(ws, rt, client, headers)
        finally:
            await client.close()


@pytest.fixture
async def api(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    monkeypatch.setenv(HOOK_ENV, HOOK_SECRET)
    async for app in start_api(make_ws(tmp_path / "ws"), aiohttp_client, {}):
        await app.all_fresh()
        yield app


# -- authentication ----------------------------------------------------------------------------

MANAGEMENT = [
    ("GET", "/api/pipelines", None),
    ("GET", "/api/pipelines/blog/status", None),
    ("GET", "/api/pipelines/_/status", None),
    ("GET", "/api/pipelines/blog/entities", None),
    ("GET", "/api/pipelines/blog/entities/a", None),
    ("POST", "/api/pipelines/blog/invalidate", {"stage": "post", "entities": ["a"]}),
    ("POST", "/api/pipelines/blog/retry", {}),
    ("POST", "/api/pipelines/blog/hold", {"stage": "post", "entities": ["b"]}),
    ("POST", "/api/pipelines/blog/release", {"stage": "post", "entities": ["b"]}),
    ("GET", "/api/events", None),
    ("GET", "/metrics", None),
    ("GET", "/api/openapi.json", None),
]


@pytest.fixture
async def guarded(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    monkeypatch.setenv(HOOK_ENV, HOOK_SECRET)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    config = f'data_root = "data"\n\n[server]\ntoken_env = "{TOKEN_ENV}"\n'
    async for app in start_api(make_ws(tmp_path / "ws", config), aiohttp_client, {}):
        yield app


async def _status(
    client: TestClient[Any, Any], method: str, path: str, body: Any, token: str | None
) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = json.dumps(body).encode() if body is not None else None
    async with client.request(method, path, data=data, headers=headers) as resp:
        if resp.status == 401:
            assert (await resp.json())["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        return resp.status  # the SSE stream is closed here, unread


async def test_every_management_route_needs_the_bearer_token(guarded: Api) -> None:
    await eventually(lambda: guarded.rt.ready.is_set())
    for method, path, body in MANAGEMENT:
        assert await _status(guarded.client, method, path, body, None) == 401, path
        assert await _status(guarded.client, method, path, body, "wrong") == 401, path
        assert await _status(guarded.client, method, path, body, TOKEN + "x") == 401, path
        assert await _status(guarded.client, method, path, body, TOKEN) == 200, path
    # Not even the 404 of an unknown route is answered without the token.
    assert await _status(guarded.client, "GET", "/api/nothing-here", None, None) == 401


async def test_health_readiness_and_hooks_need_no_token(guarded: Api) -> None:
    for path in ("/healthz", "/readyz"):
        resp = await guarded.client.get(path)
        assert resp.status == 200, path
    body = b"log z\n"
    resp = await guarded.client.post(
        "/hooks/blog/log", data=body, headers=sign(body), params={"day": "z"}
    )
    assert resp.status == 202


def test_non_loopback_bind_without_a_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = f'data_root = "data"\n\n[server]\nhost = "0.0.0.0"\ntoken_env = "{TOKEN_ENV}"\n'
    ws = make_ws(tmp_path / "ws", config)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(UsageError, match=r"refusing to bind 0\.0\.0\.0"):
        check_bind(load_workspace(ws))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    check_bind(load_workspace(ws))
    for host in ("127.0.0.1", "::1", "localhost"):
        monkeypatch.delenv(TOKEN_ENV)
        check_bind(load_workspace(ws, {"server": {"host": host}}))
        monkeypatch.setenv(TOKEN_ENV, TOKEN)


def test_serve_on_all_interfaces_without_a_token_exits_2(tmp_path: Path) -> None:
    ws = make_ws(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventrunner.cli.main",
            "-w",
            str(ws),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "refusing to bind 0.0.0.0 without a token" in proc.stderr
    assert "serving" not in proc.stdout
    assert not (ws / ".eventrunner" / "server.json").exists()


# -- reading state ---------------------------------------------------------------------------------


async def test_pipelines_and_status_count_states_per_stage(api: Api) -> None:
    counts = await api.get("/api/pipelines")
    assert counts["pipelines"]["blog"]["stages"]["post"]["fresh"] == len(DAYS)
    assert counts["pipelines"]["blog"]["stages"]["digest"]["fresh"] == 1
    status = await api.get("/api/pipelines/blog/status")
    assert status["pipeline"] == "blog"
    assert status["stages"]["post"]["fresh"] == len(DAYS)
    assert status["running"] == [] and status["recent_failures"] == []
    assert status["queue_depth"] == 0
    await api.get("/api/pipelines/nope/status", 404)


async def test_entities_filter_by_stage_and_state_and_page_with_a_total(api: Api) -> None:
    url = "/api/pipelines/blog/entities"
    everything = await api.get(url)
    assert everything["total"] == len(DAYS) + 1  # five posts and the digest
    first = await api.get(url, stage="post", limit=2)
    assert (first["total"], first["limit"], first["offset"]) == (len(DAYS), 2, 0)
    assert [r["entity"] for r in first["entities"]] == ["a", "b"]
    pages = [await api.get(url, stage="post", limit=2, offset=o) for o in (0, 2, 4)]
    assert [r["entity"] for p in pages for r in p["entities"]] == list(DAYS)
    assert [len(p["entities"]) for p in pages] == [2, 2, 1]
    beyond = await api.get(url, stage="post", offset=10)
    assert beyond["entities"] == [] and beyond["total"] == len(DAYS)
    fresh = await api.get(url, stage="post", state="fresh")
    assert fresh["total"] == len(DAYS)
    assert {r["state"] for r in fresh["entities"]} == {"fresh"}
    assert (await api.get(url, stage="post", state="dead"))["total"] == 0
    digest = await api.get(url, stage="digest")
    assert [(r["stage"], r["entity"]) for r in digest["entities"]] == [("blog.digest", "_")]
    across = await api.get("/api/pipelines/_/entities", stage="blog.post")
    assert across["total"] == len(DAYS)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"state": "bogus"}, 400),
        ({"limit": "ten"}, 400),
        ({"offset": "-1"}, 400),
        ({"limit": "-5"}, 400),
        ({"stage": "nope"}, 404),
    ],
)
async def test_bad_entity_queries_answer_json_errors(
    api: Api, query: dict[str, str], status: int
) -> None:
    error = await api.get("/api/pipelines/blog/entities", status, **query)
    assert error["error"]["message"]


async def test_explain_gives_state_reasons_and_manifest_per_stage(api: Api) -> None:
    answer = await api.get("/api/pipelines/blog/entities/a")
    assert answer["entity"] == "a"
    (row,) = answer["stages"]
    assert (row["stage"], row["state"], row["reasons"]) == ("blog.post", "fresh", [])
    assert row["manifest"]["outputs"].keys() == {"posts/a.md"}
    assert row["failure"] is None
    digest = await api.get("/api/pipelines/blog/entities/_", stage="digest")
    assert digest["stages"][0]["stage"] == "blog.digest"
    await api.get("/api/pipelines/blog/entities/zzz", 404)
    await api.get("/api/pipelines/blog/entities/a", 404, stage="nope")
    await api.get("/api/pipelines/nope/entities/a", 404)


# -- steering --------------------------------------------------------------------------------------


async def test_invalidate_with_downstream_reruns_the_entity_and_the_stages_below(
    api: Api,
) -> None:
    # Given everything fresh
    post_a, post_b = await api.manifest("a", "post"), await api.manifest("b", "post")
    digest = await api.manifest("_", "digest")
    (api.ws / "runs.log").unlink()
    # When post a is invalidated with downstream
    answer = await api.post(
        "/api/pipelines/blog/invalidate", {"stage": "post", "entities": ["a"], "downstream": True}
    )
    assert answer == {
        "stages": ["blog.post", "blog.digest"],
        "entities": ["a"],
        "downstream": [{"stage": "blog.digest", "entity": "_"}],
    }

    # Then post a and the digest run again (new manifests), and nothing else does
    async def rerun() -> bool:
        return (await api.manifest("a", "post"))["finished_ns"] != post_a["finished_ns"] and (
            await api.manifest("_", "digest")
        )["finished_ns"] != digest["finished_ns"]

    await eventually(rerun)
    await api.all_fresh()
    assert (await api.manifest("b", "post"))["finished_ns"] == post_b["finished_ns"]
    assert sorted(api.runs()) == ["digest _", "post a"]


async def test_invalidate_without_downstream_leaves_the_stages_below_alone(api: Api) -> None:
    digest = await api.manifest("_", "digest")
    post_c = await api.manifest("c", "post")
    await api.post("/api/pipelines/blog/invalidate", {"stage": "post", "entities": ["c"]})

    async def rerun() -> bool:
        return (await api.manifest("c", "post"))["finished_ns"] != post_c["finished_ns"]

    await eventually(rerun)
    await api.all_fresh()
    # The output came out identical, so the digest's inputs did not change.
    assert (await api.manifest("_", "digest"))["finished_ns"] == digest["finished_ns"]


async def test_held_state_does_not_run_until_released(api: Api) -> None:
    # Given post b on hold
    answer = await api.post("/api/pipelines/blog/hold", {"stage": "post", "entities": ["b"]})
    assert answer == {"stage": "blog.post", "entities": ["b"], "held": True}
    # When both b and c change
    await api.deliver("b", "changed b")
    await api.deliver("c", "changed c")
    # Then c runs while b stays held with its old output
    await eventually(lambda: api.out("posts/c.md") == "# CHANGED C\n")
    assert api.out("posts/b.md") == "# LOG B\n"
    held = await api.get("/api/pipelines/blog/entities", stage="post", state="held")
    assert [r["entity"] for r in held["entities"]] == ["b"]
    assert "HELD" in {r["code"] for r in held["entities"][0]["reasons"]}
    # And once released, b runs
    released = await api.post("/api/pipelines/blog/release", {"stage": "post", "entities": ["b"]})
    assert released["held"] is False
    await eventually(lambda: api.out("posts/b.md") == "# CHANGED B\n")
    await api.all_fresh()


async def test_retry_runs_a_dead_state_again(api: Api) -> None:
    # Given a new entity whose handler fails permanently
    (api.ws / "flags" / "f").touch()
    await api.deliver("f", "log f")

    async def dead() -> bool:
        return (await api.states()).get("f") == "dead"

    await eventually(dead)
    explained = await api.get("/api/pipelines/blog/entities/f", stage="post")
    row = explained["stages"][0]
    assert "DEAD" in {r["code"] for r in row["reasons"]}
    assert "flagged: f" in row["failure"]["error"]
    status = await api.get("/api/pipelines/blog/status")
    assert [f["entity"] for f in status["recent_failures"]] == ["f"]
    # When the cause is fixed and the state retried
    (api.ws / "flags" / "f").unlink()
    answer = await api.post("/api/pipelines/blog/retry", {"stage": "post", "entities": ["f"]})
    assert answer == {"cleared": [{"stage": "blog.post", "entity": "f"}]}
    # Then it runs and becomes fresh
    await eventually(lambda: api.out("posts/f.md") == "# LOG F\n")
    await api.all_fresh()
    assert (await api.states())["f"] == "fresh"


@pytest.mark.parametrize(
    ("action", "body", "status"),
    [
        ("invalidate", {}, 422),
        ("invalidate", {"stage": "post", "bogus": 1}, 422),
        ("invalidate", {"stage": 5}, 422),
        ("invalidate", {"stage": "post", "entities": "a"}, 422),
        ("invalidate", {"stage": "post", "downstream": "maybe"}, 422),
        ("invalidate", b"{not json", 400),
        ("invalidate", b"[1, 2]", 400),
        ("invalidate", b"\xff\xfe", 400),
        ("invalidate", {"stage": "nope"}, 404),
        ("invalidate", {"stage": "post", "entities": ["zzz"]}, 404),
        ("hold", {}, 422),
        ("hold", {"stage": "nope"}, 404),
        ("hold", {"stage": "post", "entities": ["zzz"]}, 404),
        ("release", {"entities": ["a"]}, 422),
        ("retry", {"stage": "nope"}, 404),
        ("retry", {"entities": [1]}, 422),
    ],
)
async def test_bad_management_bodies_answer_json_errors(
    api: Api, action: str, body: Any, status: int
) -> None:
    error = await api.post(f"/api/pipelines/blog/{action}", body, status)
    assert set(error) == {"error"} and error["error"]["message"]


async def test_unknown_pipeline_and_wrong_method_answer_json_errors(api: Api) -> None:
    await api.post("/api/pipelines/nope/invalidate", {"stage": "post"}, 404)
    resp = await api.client.get("/api/pipelines/blog/invalidate")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await api.client.get("/api/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


# -- events and metrics ------------------------------------------------------------------------


async def test_event_stream_reports_the_stage_succeeding_after_a_delivery(api: Api) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    async with api.client.get("/api/events") as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        assert await stream.content.readline() == b": connected\n"
        await api.deliver("sse", "streamed")
        async with asyncio.timeout(10):
            kind = ""
            while ("succeeded", "sse") not in [(k, d.get("entity")) for k, d in seen]:
                line = (await stream.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    seen.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, d in seen if d.get("entity") == "sse" or d.get("path") == "logs/sse.md"]
    assert kinds.index("webhook") < kinds.index("started") < kinds.index("succeeded")
    done = next(d for k, d in seen if k == "succeeded" and d.get("entity") == "sse")
    assert done["stage"] == "blog.post"


async def test_metrics_parse_and_cover_executions_webhooks_queue_states_and_fsync(
    api: Api,
) -> None:
    await api.deliver("m", "metrics")
    bad = await api.client.post("/hooks/blog/log", data=b"x", params={"day": "m2"})
    assert bad.status == 401
    await eventually(lambda: api.out("posts/m.md") is not None)
    await api.all_fresh()
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    samples = {
        name: [(s.name, s.labels, s.value) for s in fam.samples] for name, fam in families.items()
    }

    def value(family: str, sample: str, **labels: str) -> float:
        for name, have, v in samples[family]:
            if name == sample and all(have.get(k) == w for k, w in labels.items()):
                return float(v)
        raise AssertionError(f"no {sample} {labels} in {samples.get(family)}")

    assert (
        value(
            "eventrunner_executions",
            "eventrunner_executions_total",
            stage="blog.post",
            outcome="succeeded",
        )
        >= len(DAYS) + 1
    )
    assert (
        value(
            "eventrunner_webhook_requests",
            "eventrunner_webhook_requests_total",
            pipeline="blog",
            source="log",
            status="202",
        )
        == 1
    )
    assert (
        value("eventrunner_webhook_requests", "eventrunner_webhook_requests_total", status="401")
        == 1
    )
    assert value("eventrunner_queue_depth", "eventrunner_queue_depth") == 0
    # States are counted from a cache refreshed every few seconds: at least the first five.
    assert value(
        "eventrunner_states", "eventrunner_states", stage="blog.post", state="fresh"
    ) >= len(DAYS)
    assert families["eventrunner_fsync_seconds"].type in ("summary", "histogram")
    assert value("eventrunner_fsync_seconds", "eventrunner_fsync_seconds_count") >= 1
    assert value("eventrunner_fsync_seconds", "eventrunner_fsync_seconds_sum") > 0


async def test_status_counts_follow_a_hold_at_once(api: Api) -> None:
    # Given the counts read once (and kept for reuse while nothing happens)
    before = await api.get("/api/pipelines/blog/status")
    assert before["stages"]["post"]["held"] == 0
    # When a state is put on hold, the next read counts it (the change voids the reused pass)
    await api.post("/api/pipelines/blog/hold", {"stage": "post", "entities": ["b"]})
    held = await api.get("/api/pipelines/blog/status")
    assert held["stages"]["post"]["held"] == 1
    assert held["stages"]["post"]["fresh"] == before["stages"]["post"]["fresh"] - 1
    listed = await api.get("/api/pipelines/blog/entities", stage="post", state="held")
    assert [r["entity"] for r in listed["entities"]] == ["b"]
    # And released, it is fresh again
    await api.post("/api/pipelines/blog/release", {"stage": "post", "entities": ["b"]})
    await api.all_fresh()
    after = await api.get("/api/pipelines/blog/status")
    assert after["stages"]["post"] == before["stages"]["post"]


async def test_a_state_pass_yields_to_the_loop_and_is_shared(api: Api) -> None:
    # Given a table that yields after every state
    table = StateTable(api.rt, chunk=1)
    # When two readers ask at once while another task counts its turns
    first = asyncio.ensure_future(table.get())
    second = asyncio.ensure_future(table.get())
    turns = 0
    while not (first.done() and second.done()):
        turns += 1
        await asyncio.sleep(0)
    # Then the other task ran between states (the pass did not hold the loop), both readers got
    # the same pass, and it counted every state
    assert turns >= len(DAYS)
    assert first.result() is second.result()
    counts = first.result().counts(["blog.post", "blog.digest"])
    assert counts["blog.post"]["fresh"] == len(DAYS) and counts["blog.digest"]["fresh"] == 1


async def test_a_whole_workspace_pass_in_serve_yields_to_the_loop(api: Api) -> None:
    # Given everything fresh; when the engine considers every state in slices of one
    engine = api.rt.engine
    assert engine is not None
    task = asyncio.ensure_future(engine.consider_async(engine.targets(), chunk=1))
    turns = 0
    while not task.done():
        turns += 1
        await asyncio.sleep(0)
    # Then other tasks ran between the states, and nothing was stale
    assert turns >= len(DAYS)
    assert task.result() == 0


async def test_state_counts_kept_up_from_events_equal_a_full_evaluation(api: Api) -> None:
    # Given the counts read once (one full pass)
    table = api.client.app[STATES]
    await api.get("/api/pipelines/blog/status")
    passes = table.full_passes

    async def agrees() -> bool:
        served = (await api.get("/api/pipelines"))["pipelines"]
        assert api.rt.index is not None
        return bool(served == queries.status(api.rt.index)["pipelines"])  # a fresh full evaluation

    # When a new entity arrives, runs, and one entity starts failing for good
    await api.deliver("z", "log z")
    (api.ws / "flags" / "f").touch()
    await api.deliver("f", "log f")

    async def dead_and_done() -> bool:
        return (await api.states()).get("f") == "dead" and (await api.states()).get("z") == "fresh"

    await eventually(dead_and_done)
    # Then the counts served (kept up from events, with no new full pass) equal a full evaluation
    await eventually(agrees)
    assert table.full_passes == passes
    counts = (await api.get("/api/pipelines/blog/status"))["stages"]["post"]
    assert (counts["dead"], counts["fresh"]) == (1, len(DAYS) + 1)
