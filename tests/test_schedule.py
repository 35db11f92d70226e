"""The scheduler on a real AsyncIOScheduler with short intervals."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from eventrunner.service.schedule import Scheduler
from eventrunner.workspace.cron import validate_cron

DEADLINE = 5.0


async def until(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Wait for a condition the scheduler changes from its own tasks."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def test_validate_cron_accepts_five_fields() -> None:
    assert validate_cron("*/5 * * * *") is None
    assert validate_cron("0 3 * * mon-fri") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("* * * *", "Wrong number of fields"),
        ("* * * * * *", "Wrong number of fields"),
        ("@daily", "Wrong number of fields"),
        ("61 * * * *", "higher than the maximum"),
        ("* * * * mon-xyz", "xyz"),
    ],
)
def test_validate_cron_explains_a_bad_expression(text: str, reason: str) -> None:
    problem = validate_cron(text)
    assert problem is not None and reason in problem


def test_add_cron_rejects_a_bad_expression() -> None:
    with pytest.raises(ValueError):
        Scheduler().add_cron("nightly", "* * *", _noop)


async def _noop() -> None:
    pass


async def test_interval_job_runs_repeatedly() -> None:
    calls = 0

    async def tick() -> None:
        nonlocal calls
        calls += 1

    async with Scheduler() as scheduler:
        scheduler.add_interval("tick", 0.05, tick)
        await until(lambda: calls >= 3)


async def test_jobs_added_before_start_run_and_are_listed() -> None:
    ran: set[str] = set()

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            ran.add(name)

        return run

    scheduler = Scheduler()
    scheduler.add_interval("early", 0.05, job("early"))
    scheduler.add_cron("nightly", "0 3 * * *", job("nightly"))
    assert sorted(scheduler.job_ids()) == ["early", "nightly"]
    async with scheduler:
        scheduler.add_interval("late", 0.05, job("late"))
        await until(lambda: {"early", "late"} <= ran)
        assert sorted(scheduler.job_ids()) == ["early", "late", "nightly"]


async def test_a_job_that_raises_is_logged_and_keeps_being_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="eventrunner.schedule"):
        async with Scheduler() as scheduler:
            scheduler.add_interval("broken", 0.05, broken)
            await until(lambda: calls >= 3)
    failures = [r for r in caplog.records if r.name == "eventrunner.schedule"]
    assert failures and "broken" in failures[0].getMessage()
    assert failures[0].exc_info is not None


async def test_a_slow_job_never_overlaps_itself_and_still_reruns() -> None:
    running = 0
    most = 0
    calls = 0

    async def slow() -> None:
        nonlocal running, most, calls
        running += 1
        most = max(most, running)
        calls += 1
        try:
            await asyncio.sleep(0.15)  # three intervals long
        finally:
            running -= 1

    async with Scheduler() as scheduler:
        scheduler.add_interval("slow", 0.05, slow)
        await until(lambda: calls >= 4)
    assert most == 1


async def test_ticks_missed_during_a_long_run_become_one_run_right_after_it() -> None:
    interval = 0.5
    starts: list[float] = []
    release = asyncio.Event()

    async def job() -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            await release.wait()

    async with Scheduler() as scheduler:
        scheduler.add_interval("long", interval, job)
        await until(lambda: len(starts) == 1)
        # Given the first run spans two more ticks, and ends just after the second of them
        await asyncio.sleep(starts[0] + 2 * interval + 0.05 - time.monotonic())
        released_at = time.monotonic()
        release.set()
        # Then the owed run starts at once, not at the next tick (0.45 s away)
        await until(lambda: len(starts) >= 2)
        assert starts[1] - released_at < 0.25
        # And the missed ticks were coalesced into that one run
        await asyncio.sleep(0.1)
        assert len(starts) == 2


async def test_remove_stops_a_job_and_ignores_unknown_ids() -> None:
    calls = 0

    async def tick() -> None:
        nonlocal calls
        calls += 1

    async with Scheduler() as scheduler:
        scheduler.add_interval("tick", 0.05, tick)
        await until(lambda: calls >= 1)
        scheduler.remove("tick")
        scheduler.remove("never-added")
        assert scheduler.job_ids() == []
        stopped_at = calls
        # A later job proves time passed: by its third run the removed one would have run again
        later = 0

        async def witness() -> None:
            nonlocal later
            later += 1

        scheduler.add_interval("witness", 0.05, witness)
        await until(lambda: later >= 3)
        assert calls == stopped_at


async def test_adding_an_existing_id_replaces_the_job() -> None:
    seen: list[str] = []

    async def old() -> None:
        seen.append("old")

    async def new() -> None:
        seen.append("new")

    async with Scheduler() as scheduler:
        scheduler.add_interval("job", 0.05, old)
        scheduler.add_interval("job", 0.05, new)
        await until(lambda: len(seen) >= 2)
        assert scheduler.job_ids() == ["job"]
    assert set(seen) == {"new"}


async def test_close_cancels_a_running_job_and_is_safe_twice() -> None:
    started = asyncio.Event()
    cancelled = False

    async def forever() -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    scheduler = Scheduler()
    scheduler.add_interval("forever", 0.05, forever)
    async with scheduler:
        await asyncio.wait_for(started.wait(), DEADLINE)
    assert cancelled
    await scheduler.close()
    await scheduler.close()


async def test_close_without_start_is_fine() -> None:
    scheduler = Scheduler()
    scheduler.add_interval("x", 1, _noop)
    await scheduler.close()
    await scheduler.close()
