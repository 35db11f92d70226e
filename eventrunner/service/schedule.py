"""Interval and cron jobs on APScheduler 3's AsyncIOScheduler, one run at a time per job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from eventrunner.run.tasks import ClosesOnce

logger = logging.getLogger("eventrunner.schedule")

JobFunc = Callable[[], Awaitable[None]]
_CLOSE_GRACE = 5.0  # seconds close() waits for cancelled jobs to unwind


def next_fire(cron: str, after: datetime | None = None) -> datetime | None:
    """When a 5-field crontab expression fires next after `after` (default: now), in UTC."""
    now = after or datetime.now(UTC)
    fire: datetime | None = CronTrigger.from_crontab(cron, timezone="UTC").get_next_fire_time(
        None, now
    )
    return fire


@dataclass
class _Job:
    job_id: str
    func: JobFunc
    # Built at registration, so an interval counts from the scheduler's start.
    make_trigger: Callable[[], BaseTrigger]
    task: asyncio.Task[None] | None = None
    owed: bool = False  # a run came due while one was running: run once more when it ends


class Scheduler(ClosesOnce):
    """Runs async jobs on intervals or cron schedules; a job never overlaps itself.

    APScheduler only decides when a job is due; the run itself is our own task. A tick that comes
    while the previous run is still going is remembered (at most one) and run as soon as that run
    ends, so a slow job or a blocked loop coalesces missed runs into one instead of losing them.
    """

    def __init__(self, *, timezone: str = "UTC") -> None:
        self._timezone = timezone
        self._jobs: dict[str, _Job] = {}
        self._aps: AsyncIOScheduler | None = None

    def add_interval(self, job_id: str, seconds: float, func: JobFunc) -> None:
        """Run `func` every `seconds`, first after one interval; replaces a job of the same id."""
        if seconds <= 0:
            raise ValueError(f"interval must be positive: {seconds!r}")
        self._add(
            _Job(job_id, func, lambda: IntervalTrigger(seconds=seconds, timezone=self._timezone))
        )

    def add_cron(self, job_id: str, cron: str, func: JobFunc) -> None:
        """Run `func` on a 5-field crontab schedule; raises ValueError for a bad expression."""
        CronTrigger.from_crontab(cron, timezone=self._timezone)  # fail here, not at start
        self._add(
            _Job(job_id, func, lambda: CronTrigger.from_crontab(cron, timezone=self._timezone))
        )

    def remove(self, job_id: str) -> None:
        """Stop scheduling `job_id` (a run in progress finishes); no error if absent."""
        if self._jobs.pop(job_id, None) is not None and self._aps is not None:
            try:
                self._aps.remove_job(job_id)
            except JobLookupError:
                pass

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    async def __aenter__(self) -> Scheduler:
        if self._closed:
            raise RuntimeError("scheduler is closed")
        if self._aps is None:
            self._aps = AsyncIOScheduler(
                event_loop=asyncio.get_running_loop(), timezone=self._timezone
            )
            for job in self._jobs.values():
                self._register(job)
            self._aps.start()
        return self

    async def _release(self) -> None:
        """Stop scheduling, cancel running jobs and wait briefly for them (close(), once)."""
        if self._aps is not None and self._aps.running:
            self._aps.shutdown(wait=False)
            # AsyncIOScheduler defers its shutdown to the next loop pass; let it happen now.
            await asyncio.sleep(0)
        running = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in running:
            task.cancel()
        if running:
            _, stuck = await asyncio.wait(running, timeout=_CLOSE_GRACE)
            for task in stuck:
                logger.warning("job task %s ignored cancellation; leaving it", task.get_name())

    def _add(self, job: _Job) -> None:
        old = self._jobs.get(job.job_id)
        if old is not None:
            job.task = old.task  # a run of the old definition still counts as running
        self._jobs[job.job_id] = job
        if self._aps is not None and not self._closed:
            self._register(job)

    def _register(self, job: _Job) -> None:
        assert self._aps is not None
        self._aps.add_job(
            self._due,
            job.make_trigger(),
            args=[job.job_id],
            id=job.job_id,
            name=job.job_id,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # run late rather than skip
        )

    async def _due(self, job_id: str) -> None:
        """APScheduler's job: start a run, or owe one if a run is still going. Returns at once."""
        job = self._jobs.get(job_id)
        if job is None or self._closed:
            return
        if job.task is not None and not job.task.done():
            job.owed = True
            logger.debug("job %s is due while still running; it will run again when done", job_id)
            return
        job.task = asyncio.create_task(self._run(job), name=f"eventrunner-job-{job_id}")

    async def _run(self, job: _Job) -> None:
        while True:
            job.owed = False
            try:
                await job.func()
            except Exception:  # cancellation is a BaseException and passes through
                logger.exception("scheduled job %s failed", job.job_id)
            current = self._jobs.get(job.job_id)
            if current is None or self._closed or not (job.owed or current.owed):
                return
            current.owed = False
            job = current  # a replaced job runs its new definition next
