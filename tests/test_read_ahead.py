"""The thread executor's read-ahead: short calls queue behind busy threads (so no thread idles
while the loop prepares the next call), slow calls do not, queued calls can be dropped at a
stop, and no more handlers ever run at once than there are threads. Real handlers, real files."""

from __future__ import annotations

import asyncio
import time

import pytest
from call_helpers import stage_call
from conftest import MakeWorkspace, Workspace

from eventrunner.run.engine import Engine
from eventrunner.run.executors import Call
from eventrunner.run.thread_pool import READ_AHEAD, ThreadExecutor
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

HANDLERS = """\
import threading
import time

_lock = threading.Lock()
_running = 0
peak = 0


def counted(ctx, t: str) -> str:
    global _running, peak
    with _lock:
        _running += 1
        peak = max(peak, _running)
    try:
        (ctx.data_root / "ran").mkdir(exist_ok=True)
        (ctx.data_root / "ran" / ctx.entity_id).write_text("")
        time.sleep(0.001)
        return t.upper()
    finally:
        with _lock:
            _running -= 1


def slow(t: str) -> str:
    time.sleep(0.2)
    return t


def hang(ctx, t: str) -> str:
    (ctx.data_root / "started").write_text("")
    deadline = time.monotonic() + 20
    while not (ctx.data_root / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return t
"""

PIPELINE = """\
[stages.counted]
handler = "h:counted"
inputs = { t = "in/{n}.txt" }
output = "counted/{n}.txt"

[stages.upper]
handler = "h:counted"
inputs = { t = "counted/{n}.txt" }
output = "upper/{n}.txt"

[stages.slow]
handler = "h:slow"
inputs = { t = "in/{n}.txt" }
output = "slow/{n}.txt"

[stages.hang]
handler = "h:hang"
inputs = { t = "in/{n}.txt" }
output = "hung/{n}.txt"
"""

ENTITIES = [f"e{i}" for i in range(12)]


@pytest.fixture
def ws(make_workspace: MakeWorkspace) -> Workspace:
    files: dict[str, str | bytes] = {"pipelines/p.toml": PIPELINE, "handlers/h.py": HANDLERS}
    files.update({f"in/{n}.txt": n for n in ENTITIES})
    return make_workspace(files)


def _calls(ws: Workspace) -> dict[tuple[str, str], Call]:
    """Every call of the workspace, as the engine would make it (one handler module for all)."""
    loaded = load_workspace(ws.root)
    qualnames = ("p.counted", "p.upper", "p.slow", "p.hang")
    return {(q, n): stage_call(ws.root, q, n, loaded=loaded) for q in qualnames for n in ENTITIES}


async def _warm(pool: ThreadExecutor, call: Call) -> None:
    """Run short calls one at a time until the pool reads ahead (bounded)."""
    for _ in range(500):
        if pool.read_ahead:
            return
        (await pool.submit(call)).discard()
    pytest.fail(f"no read-ahead after 500 short calls: {pool._mean:.4f}s on average")


async def test_short_calls_read_ahead_without_more_handlers_running_at_once(ws: Workspace) -> None:
    calls = _calls(ws)
    pool = ThreadExecutor(2)
    try:
        # Given a pool that has not run anything yet: it takes no more than its threads
        assert pool.read_ahead == 0
        # When short calls have run
        await _warm(pool, calls[("p.counted", "e0")])
        # Then it takes READ_AHEAD calls more per thread
        assert pool.read_ahead == READ_AHEAD * pool.capacity == READ_AHEAD * 2
        # And all it takes at once succeed, never more than two handlers running together
        wave = [pool.submit(calls[("p.counted", n)]) for n in ENTITIES[: 2 + pool.read_ahead]]
        results = await asyncio.gather(*wave)
        assert len(results) == 8 and all(r.hashes for r in results)
        assert 1 <= calls[("p.counted", "e0")].func.__globals__["peak"] <= 2
        for r in results:
            r.discard()
        # When one slow call runs, the read-ahead is off again
        (await pool.submit(calls[("p.slow", "e0")])).discard()
        assert pool.read_ahead == 0
    finally:
        await pool.close()


async def test_a_stop_drops_the_calls_no_thread_has_started(ws: Workspace) -> None:
    calls = _calls(ws)
    pool = ThreadExecutor(1)
    try:
        await _warm(pool, calls[("p.counted", "e0")])
        # Given the only thread busy, and two calls queued behind it
        busy = pool.submit(calls[("p.hang", "e0")])
        deadline = time.monotonic() + 10
        while not ws.exists("started"):
            assert time.monotonic() < deadline, "the hanging call never started"
            await asyncio.sleep(0.01)
        queued = [pool.submit(calls[("p.counted", n)]) for n in ("e1", "e2")]
        # When the stop drops what has not started
        assert pool.drop_queued() == 2
        # Then those calls are cancelled and their handlers never run, while the running one
        # returns and the thread serves later calls
        assert all(f.cancelled() for f in queued)
        ws.write("release", "")
        (await busy).discard()
        (await pool.submit(calls[("p.counted", "e3")])).discard()
        assert not ws.exists("ran/e1") and not ws.exists("ran/e2")
        assert ws.exists("ran/e3")
        assert pool.drop_queued() == 0
    finally:
        ws.write("release", "")
        await pool.close()


class _Counting(ThreadExecutor):
    """The real thread executor, counting the calls it holds at once (taken, not resolved)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.held = self.peak_held = 0

    def submit(self, call: Call) -> asyncio.Future:  # type: ignore[type-arg]
        future = super().submit(call)
        self.held += 1
        self.peak_held = max(self.peak_held, self.held)
        future.add_done_callback(lambda _f: setattr(self, "held", self.held - 1))
        return future


async def test_the_engine_feeds_the_read_ahead_and_commits_every_state(ws: Workspace) -> None:
    # Given a warmed two-thread executor and an engine over two chained stages of 12 entities
    pool = _Counting(2)
    await _warm(pool, _calls(ws)[("p.counted", "e0")])
    loaded = load_workspace(ws.root)
    store = Store(loaded.settings.state_dir)
    index = Index.load(loaded, store)
    chain = {"p.counted", "p.upper"}
    engine = Engine(index, store, jobs=2, executor=pool, allow=lambda q, _e: q in chain)
    try:
        engine.consider(engine.planner.all_targets(), fresh_pass=True)
        # When it runs them
        outcome = await engine.drain()
    finally:
        await pool.close()
    # Then it handed the executor more calls than threads, within the read-ahead ...
    assert 2 < pool.peak_held <= 2 + READ_AHEAD * 2
    # ... and every state was committed, each output from its own input
    assert outcome.succeeded == 24
    assert [ws.read(f"upper/{n}.txt") for n in ENTITIES] == [n.upper() for n in ENTITIES]
