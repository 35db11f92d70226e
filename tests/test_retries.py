"""The retry timer (service/retries.py): one timer for the earliest due retry, on a real event
loop; and in a real Runtime, a retry dropped or kept when the state is held, retried by hand or
fixed by an input change."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serve_helpers import LOG_HELPER, count_runs, make_workspace, read, until

from eventrunner.run import management, queries
from eventrunner.run.events import Dead, Failed, Started
from eventrunner.service.retries import RetryTimer
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace


class Fired:
    """What the timer called `due` with, and the wall-clock time of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[tuple[str, str, float]]]] = []

    def __call__(self, due: list[tuple[str, str, float]]) -> None:
        self.calls.append((time.time(), due))

    @property
    def entities(self) -> list[str]:
        return [e for _, due in self.calls for _, e, _ in due]


async def test_the_earliest_retry_fires_first_and_none_before_its_time() -> None:
    # Given a timer with three retries scheduled out of order
    fired = Fired()
    timer = RetryTimer(fired)
    now = time.time()
    timer.schedule("p.s", "late", now + 0.3)
    timer.schedule("p.s", "early", now + 0.05)
    timer.schedule("p.s", "middle", now + 0.15)
    assert timer.pending == 3 and timer.next_due() == now + 0.05
    # Then each fires in time order, never before its time, and nothing is left
    await until(lambda: len(fired.entities) == 3, "three retries")
    assert fired.entities == ["early", "middle", "late"]
    for called_at, due in fired.calls:
        assert all(called_at >= at for _, _, at in due)
    assert timer.pending == 0 and timer.next_due() is None
    timer.close()


async def test_a_forgotten_or_rescheduled_retry_fires_only_at_its_latest_time() -> None:
    # Given a retry forgotten and one moved earlier, with a sentinel after both
    fired = Fired()
    timer = RetryTimer(fired)
    now = time.time()
    timer.schedule("p.s", "forgotten", now + 0.05)
    timer.schedule("p.s", "moved", now + 30)
    timer.forget("p.s", "forgotten")
    timer.schedule("p.s", "moved", now + 0.1)
    timer.schedule("p.s", "sentinel", now + 0.2)
    # Then the moved one fires at its new time, the forgotten one never
    await until(lambda: "sentinel" in fired.entities, "the sentinel")
    assert fired.entities == ["moved", "sentinel"]
    assert fired.calls[0][1] == [("p.s", "moved", now + 0.1)]
    timer.close()


async def test_events_schedule_a_retry_and_a_start_or_death_ends_it() -> None:
    # Given a timer listening to events
    fired = Fired()
    timer = RetryTimer(fired)
    far = time.time() + 3600
    # When failures with retry times arrive, then a start, a death and a dead failure
    for e in ("a", "b", "c", "d"):
        timer.on_event(Failed(stage="p.s", entity=e, error="E", attempts=1, retry_at=far))
    assert timer.pending == 4
    timer.on_event(Started(stage="p.s", entity="a", attempt=2))
    timer.on_event(Dead(stage="p.s", entity="b", attempts=3, error="E"))
    timer.on_event(Failed(stage="p.s", entity="c", error="E", attempts=3, dead=True))
    # Then only d still has its retry; a closed timer takes no more
    assert timer.pending == 1 and timer.next_due() == far
    timer.close()
    timer.on_event(Failed(stage="p.s", entity="e", error="E", attempts=1, retry_at=far))
    assert timer.pending == 1 and fired.calls == []


RUNTIME = """\
[runtime]
debounce = "20ms"
settle = "100ms"
retry_sweep_interval = "1h"
reconcile_interval = "1h"
shutdown_grace = "10s"
"""

PIPELINE = """\
name = "p"
[sources.inbox]
pattern = "inbox/{name}.txt"
[stages.limited]
handler = "h:limited"
inputs  = { text = "inbox/{name}.txt" }
output  = "out/{name}.txt"
retry   = { max_attempts = 5, backoff = "1s", max_backoff = "1s" }
"""

# Like an HTTP 429 while limit.flag exists: "wait N" asks to be retried after N seconds.
HANDLERS = (
    LOG_HELPER
    + """
from eventrunner import RetryLater


def limited(ctx, text: str) -> str:
    _log("limited", ctx, text)
    words = text.split()
    if words[0] == "wait" and (RUNS.parent / "limit.flag").exists():
        raise RetryLater("HTTP 429 Too Many Requests", retry_after=float(words[1]))
    return text.upper()
"""
)


@contextlib.asynccontextmanager
async def _serving(root: Path) -> AsyncIterator[Runtime]:
    async with Runtime(load_workspace(root)) as rt:
        await rt.start()
        yield rt


def _state(rt: Runtime, entity: str) -> str:
    assert rt.index is not None
    (row,) = queries.explain(rt.index, entity, "limited")
    state: str = row["state"]
    return state


def _manage(rt: Runtime, action: str, **body: Any) -> None:
    management.manage(rt.session, action, {"stage": "limited", **body})


async def test_a_held_state_is_not_retried_at_its_time_and_runs_once_released(
    tmp_path: Path,
) -> None:
    # Given a state whose retry is due 1 s after its failure
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": RUNTIME,
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": HANDLERS,
            "limit.flag": "",
        },
    )
    async with _serving(ws) as rt:
        (ws / "inbox").mkdir()
        (ws / "inbox/a.txt").write_text("wait 1\n")
        await until(lambda: rt.retries.pending == 1, "the retry to be scheduled")
        due = rt.retries.next_due()
        assert due is not None
        # When it is held before then, and its time passes
        _manage(rt, "hold", entities=["a"])
        await until(lambda: rt.retries.pending == 0 and time.time() > due, "the timer to fire")
        # Then it was not run again: it stays held
        assert count_runs(ws, "limited", "a") == 1 and _state(rt, "a") == "held"
        # And once released, its retry being due, it runs at once
        (ws / "limit.flag").unlink()
        _manage(rt, "release", entities=["a"])
        await until(lambda: read(ws / "out/a.txt") == "WAIT 1\n", "the released run")
        assert count_runs(ws, "limited", "a") == 2


async def test_a_retry_by_hand_or_an_input_fix_runs_now_and_drops_the_scheduled_retry(
    tmp_path: Path,
) -> None:
    # Given two states whose retries are an hour away
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": RUNTIME,
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": HANDLERS,
            "inbox/m.txt": "wait 3600\n",
            "inbox/f.txt": "wait 3600\n",
            "limit.flag": "",
        },
    )
    async with _serving(ws) as rt:
        await until(lambda: rt.retries.pending == 2, "both retries scheduled")
        assert _state(rt, "m") == "failed" and _state(rt, "f") == "failed"
        # When one is retried by hand (the limit lifted) and the other's input is fixed
        (ws / "limit.flag").unlink()
        _manage(rt, "retry", entities=["m"])
        (ws / "inbox/f.txt").write_text("fixed\n")
        # Then both run now, and no retry is left scheduled
        await until(lambda: read(ws / "out/m.txt") == "WAIT 3600\n", "m retried by hand")
        await until(lambda: read(ws / "out/f.txt") == "FIXED\n", "f fixed by its input")
        assert rt.retries.pending == 0 and rt.retries.next_due() is None
        assert count_runs(ws, "limited", "m") == 2 and count_runs(ws, "limited", "f") == 2
