"""The execution history: recorded from a real runtime's events, served by GET /api/history,
kept across a restart in .eventrunner/history.jsonl, bounded in memory and on disk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from dashboard_helpers import dashboard_workspace

from eventrunner.server.app import HISTORY, create_app
from eventrunner.service.history import FILE, History
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def served(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> AsyncIterator[tuple[Runtime, TestClient[Any, Any]]]:
    root = dashboard_workspace(tmp_path / "ws", n=2)
    async with Runtime(load_workspace(root), watch=False) as rt:
        client = await aiohttp_client(create_app(rt))  # as serve does: the app, then start
        await rt.start()
        assert rt.engine is not None
        await rt.engine.wait_idle()
        try:
            yield rt, client
        finally:
            await client.close()


async def _history(client: TestClient[Any, Any], **query: str) -> dict[str, Any]:
    resp = await client.get("/api/history", params=query)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def test_each_execution_is_recorded_with_trigger_duration_outcome_and_output_hash(
    served: tuple[Runtime, TestClient[Any, Any]],
) -> None:
    rt, client = served
    assert rt.index is not None
    data = await _history(client, stage="upper", entity="e001")
    (run,) = data["executions"]
    assert run["stage"] == "p.upper" and run["outcome"] == "succeeded"
    assert run["trigger"] == "MISSING" and run["attempt"] == 1
    assert run["duration_s"] >= 0 and run["started"] > 0
    assert run["output_hash"] == rt.index.manifests["p.upper"]["e001"].outputs["up/e001.txt"]
    dead = (await _history(client, outcome="dead"))["executions"]
    assert [(e["entity"], e["error"]) for e in dead] == [
        ("gone", "PermanentError: fatal input in gone: code 4711")
    ]
    failed = (await _history(client, pipeline="p", outcome="failed"))["executions"]
    assert {e["entity"] for e in failed} == {"flaky", '<script>alert("x\'y")<'}


async def test_history_pages_newest_first_and_refuses_bad_filters(
    served: tuple[Runtime, TestClient[Any, Any]],
) -> None:
    _, client = served
    every = (await _history(client))["executions"]
    seqs = [e["seq"] for e in every]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 7  # 5 upper + 2 count
    page = await _history(client, limit="3")
    assert [e["seq"] for e in page["executions"]] == seqs[:3]
    more = await _history(client, limit="3", before=str(page["next_before"]))
    assert [e["seq"] for e in more["executions"]] == seqs[3:6]
    for bad, status in (({"outcome": "meh"}, 400), ({"stage": "nope"}, 404), ({"limit": "x"}, 400)):
        resp = await client.get("/api/history", params=bad)
        assert resp.status == status, bad
        assert (await resp.json())["error"]["message"]


async def test_a_retry_is_recorded_as_one_with_its_attempt(
    served: tuple[Runtime, TestClient[Any, Any]],
) -> None:
    rt, client = served
    assert rt.engine is not None
    resp = await client.post(
        "/api/pipelines/p/retry", json={"stage": "upper", "entities": ["flaky"]}
    )
    assert resp.status == 200
    await rt.engine.wait_idle()
    runs = (await _history(client, entity="flaky"))["executions"]
    assert [r["attempt"] for r in runs] == [1, 1]  # a retry clears the record: attempt 1 again
    assert all(r["outcome"] == "failed" for r in runs)


async def test_the_history_survives_a_restart(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=1)
    async with Runtime(load_workspace(root), watch=False) as rt:
        app = create_app(rt)
        client = await aiohttp_client(app)
        await rt.start()
        assert rt.engine is not None
        await rt.engine.wait_idle()
        before = [e.to_json() for e in app[HISTORY]]
        await client.close()  # the app's cleanup flushes the journal
    assert len(before) == 5
    async with Runtime(load_workspace(root), watch=False) as rt:
        client = await aiohttp_client(create_app(rt))
        await rt.start()
        try:
            assert (await _history(client))["executions"] == before[::-1]
        finally:
            await client.close()


def _events(stage: str, entity: str, t: float) -> list[dict[str, Any]]:
    """The runtime's events for one successful execution (as the engine emits them)."""
    return [
        {
            "kind": "queued",
            "stage": stage,
            "entity": entity,
            "reasons": ["INPUT_CHANGED"],
            "time": t,
        },
        {"kind": "started", "stage": stage, "entity": entity, "attempt": 1, "time": t},
        {"kind": "succeeded", "stage": stage, "entity": entity, "duration_s": 0.5, "time": t + 1},
    ]


def test_the_journal_stays_bounded_in_memory_and_on_disk(tmp_path: Path) -> None:
    path = tmp_path / FILE
    history = History(path, limit=3)
    for i in range(10):
        for event in _events("p.s", f"e{i}", float(i)):
            history.on_event(event)
        history.flush()
    assert [e.entity for e in history] == ["e7", "e8", "e9"]
    lines = path.read_text().splitlines()
    assert len(lines) <= 2 * 3  # compacted whenever it grows past twice the limit
    assert [json.loads(line)["entity"] for line in lines][-3:] == ["e7", "e8", "e9"]
    assert history.entries[-1].trigger == "INPUT_CHANGED"
    assert history.entries[-1].duration_s == 0.5


def test_a_torn_last_line_from_a_crash_is_skipped_on_load(tmp_path: Path) -> None:
    path = tmp_path / FILE
    history = History(path)
    for event in _events("p.s", "a", 1.0):
        history.on_event(event)
    history.flush()
    with open(path, "a") as fh:
        fh.write('{"seq": 2, "stage": "p.s", "ent')  # killed mid-write
    again = History(path)
    again.load()
    assert [e.entity for e in again] == ["a"]
    for event in _events("p.s", "b", 2.0):
        again.on_event(event)
    assert again.entries[-1].seq == 2  # numbering goes on after what was kept
    again.flush()
    third = History(path)
    third.load()
    assert [e.entity for e in third] == ["a", "b"]
