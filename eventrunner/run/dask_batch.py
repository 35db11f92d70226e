"""Which calls share a Dask task, and how the Dask executor keeps track of them.

A stage's calls are timed on the workers; once a stage's calls measure under SMALL_S on
average (and it has no timeout, which is per call), its waiting calls are grouped into tasks
that run about BATCH_S, so the scheduler's ~1 ms per task does not cap throughput. Idle
futures are used first: a few calls with free workers go one per task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from eventrunner.run.executors import Call
from eventrunner.run.invoke import Written

log = logging.getLogger("eventrunner.executor")

BATCH_MAX = 64  # calls in one task at most
SMALL_S = 0.01  # calls shorter than this (on average, once measured) are batched ...
BATCH_S = 0.05  # ... into tasks running about this long
WARMUP = 4  # calls of a stage measured before it is batched


@dataclass(eq=False)
class Job:
    """One call the engine submitted, and where it is."""

    call: Call
    future: asyncio.Future[Written]
    seq: int
    solo: bool = False  # a lost batch's call: sent alone from now on
    timer: asyncio.TimerHandle | None = None
    batch: Batch | None = None


@dataclass(eq=False)
class Batch:
    """The calls one Dask task runs, under its unique key."""

    key: str
    jobs: list[Job]
    dask: Any = None  # its distributed Future, once submitted
    started: bool = False  # a worker said it started it


class Pace:
    """A stage's measured call time on the workers (moving average)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0

    def add(self, seconds: float) -> None:
        self.n += 1
        self.mean = seconds if self.n == 1 else 0.8 * self.mean + 0.2 * seconds

    def batch(self) -> int:
        """Calls per task for this stage (1: not batched)."""
        if self.n < WARMUP or self.mean >= SMALL_S:
            return 1
        return max(1, min(BATCH_MAX, int(BATCH_S / max(self.mean, 1e-5))))


def batch_size(call: Call, paces: dict[str, Pace], waiting: int, free: int) -> int:
    """How many of the `waiting` calls of `call`'s stage the next task takes, `free` futures
    being available."""
    if call.timeout is not None:
        return 1  # a timeout is per call: its task must start with it
    pace = paces.get(call.stage.qualname)
    want = pace.batch() if pace is not None else 1
    return max(1, min(want, -(-waiting // max(1, free))))  # idle futures first


def fail_threadsafe(future: asyncio.Future[Written], exc: BaseException) -> None:
    """Fail a call's future from a thread."""

    def fail() -> None:
        if not future.done():
            future.set_exception(exc)

    future.get_loop().call_soon_threadsafe(fail)


def warn_missing_resources(
    call: Call, offered: Collection[str], warned: set[tuple[str, str]]
) -> None:
    """Log once per stage and resource that no worker offers it now (its calls wait)."""
    for name in call.stage.resources:
        if name not in offered and (call.stage.qualname, name) not in warned:
            warned.add((call.stage.qualname, name))
            log.warning(
                "%s needs Dask resource %s, which no worker offers now: its calls wait "
                "until a worker with it joins",
                call.stage.qualname,
                name,
            )
