"""`[runtime] one_core`: while handler calls are quick, a run's threads share the core they are
on (run/affinity.py); slow calls, the executor's close and `one_core = false` give them their
cores back, and serve never pins. Real threads, real affinity masks (Linux, 2+ cores)."""

from __future__ import annotations

import os

import pytest
from call_helpers import stage_call
from conftest import MakeWorkspace, Workspace

from eventrunner.run.affinity import OneCore
from eventrunner.run.session import Session
from eventrunner.run.thread_pool import ThreadExecutor
from eventrunner.workspace.load import load_workspace

pytestmark = pytest.mark.skipif(not OneCore.available(), reason="needs Linux and 2+ cores")

HANDLERS = """\
import os
import time


def cores(t: str) -> str:
    return ",".join(map(str, sorted(os.sched_getaffinity(0))))


def slow(t: str) -> str:
    time.sleep(0.2)
    return t
"""

PIPELINE = """\
[stages.cores]
handler = "h:cores"
inputs = { t = "in/{n}.txt" }
output = "cores/{n}.txt"

[stages.slow]
handler = "h:slow"
inputs = { t = "in/{n}.txt" }
output = "slow/{n}.txt"
"""

ENTITIES = [f"e{i:03d}" for i in range(150)]


@pytest.fixture
def ws(make_workspace: MakeWorkspace) -> Workspace:
    files: dict[str, str | bytes] = {"pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS}
    files.update({f"in/{n}.txt": n for n in ENTITIES})
    return make_workspace(files)


async def test_quick_calls_share_one_core_until_a_slow_call_or_the_close(ws: Workspace) -> None:
    before = os.sched_getaffinity(0)
    quick, slow = stage_call(ws.root, "p.cores", "e000"), stage_call(ws.root, "p.slow", "e000")
    pool = ThreadExecutor(2, one_core=OneCore())
    try:
        # Given quick calls, until the pool pins (bounded: its mean starts at 1 s)
        for _ in range(500):
            (await pool.submit(quick)).discard()
            if pool.one_core is not None and pool.one_core.pinned:
                break
        assert pool.one_core is not None and pool.one_core.pinned
        # Then every thread is on one core of those it had: the handler's and this (the loop's)
        here = os.sched_getaffinity(0)
        assert len(here) == 1 and here <= before
        # When a slow call has run, Then they all have their cores back
        (await pool.submit(slow)).discard()
        assert not pool.one_core.pinned
        assert os.sched_getaffinity(0) == before
    finally:
        await pool.close()
    # And the close gives them back too, had they been pinned
    assert os.sched_getaffinity(0) == before


async def test_close_gives_the_cores_back(ws: Workspace) -> None:
    before = os.sched_getaffinity(0)
    quick = stage_call(ws.root, "p.cores", "e000")
    pool = ThreadExecutor(2, one_core=OneCore())
    for _ in range(500):
        (await pool.submit(quick)).discard()
        if pool.one_core is not None and pool.one_core.pinned:
            break
    assert len(os.sched_getaffinity(0)) == 1
    await pool.close()
    assert os.sched_getaffinity(0) == before


def _masks(ws: Workspace) -> list[set[int]]:
    return [{int(c) for c in ws.read(f"cores/{n}.txt").split(",")} for n in ENTITIES]


def test_a_run_of_quick_calls_pins_and_one_core_false_does_not(ws: Workspace) -> None:
    everything = os.sched_getaffinity(0)
    # When a run (a real process) makes 150 quick calls
    res = ws.sub("run", "--json", "--stage", "p.cores", "-j", "2")
    assert res.code == 0, res.err
    masks = _masks(ws)
    # Then the first ones ran on every core, later ones on one and the same core
    assert masks[0] == everything
    pinned = [m for m in masks if len(m) == 1]
    assert pinned and len({min(m) for m in pinned}) == 1
    # Given one_core = false, When the same calls run again, Then none is pinned
    toml = ws.read("eventrunner.toml")
    assert toml.startswith("[runtime]\n")  # conftest's retry policy: one_core joins it
    ws.write("eventrunner.toml", toml.replace("[runtime]\n", "[runtime]\none_core = false\n", 1))
    for n in ENTITIES:
        ws.delete(f"cores/{n}.txt")  # missing: every call runs again
    res = ws.sub("run", "--json", "--stage", "p.cores", "-j", "2")
    assert res.code == 0, res.err
    assert res.json["executed"] == len(ENTITIES)
    assert all(m == everything for m in _masks(ws))


async def test_serve_never_pins(ws: Workspace) -> None:
    loaded = load_workspace(ws.root)
    async with Session(loaded, "serve", live=True) as served:
        assert served.engine is not None
        assert getattr(served.engine.executor, "one_core", "none") is None
    async with Session(load_workspace(ws.root), "run") as run:
        assert run.engine is not None
        assert isinstance(getattr(run.engine.executor, "one_core", None), OneCore)
