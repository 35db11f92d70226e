"""One CPU core for a run's threads while its handler calls are quick (Linux).

With the GIL only one thread runs Python at a time, and every system call hands it over: a
short call's thread passes it to the event loop, the committer and the other handler threads
dozens of times per execution (~85 futex calls each). Across cores each hand-off wakes a
thread on another CPU, which on this project's 2-core VMs cost more than the second core
gave: a cold `run` of 10,000 entities x 2 stages at -j2 took 7.7-8.6 s on one core against
9.9-11.2 s on two, with a third less CPU. So while calls are quick, `run`'s thread executor
keeps every thread of the process on the core it is on (`[runtime] one_core`), and gives
them back the cores they had once calls are slow, or at the end.

Threads started meanwhile inherit one core from their creator, and so do processes a handler
starts while pinned (the reason slow calls, which is where subprocesses are, unpin).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("eventrunner.affinity")


class OneCore:
    """pin(): every thread of this process onto the core the caller runs on; release(): back
    to the cores they had before. Both idempotent; errors are logged, never raised (it is only
    a matter of speed)."""

    def __init__(self) -> None:
        self._before: set[int] | None = None

    @staticmethod
    def available() -> bool:
        """True on Linux with more than one core allowed to this process."""
        if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
            return False
        return len(os.sched_getaffinity(0)) > 1

    @property
    def pinned(self) -> bool:
        return self._before is not None

    def pin(self) -> None:
        if self._before is not None:
            return
        try:
            before = os.sched_getaffinity(0)
            here = _current_cpu()
            _apply({here if here in before else min(before)})
        except OSError as exc:
            log.info("threads not pinned to one core: %s", exc)
            return
        self._before = before

    def release(self) -> None:
        before, self._before = self._before, None
        if before is not None:
            try:
                _apply(before)
            except OSError as exc:
                log.warning("threads left on one core: %s", exc)


def _apply(cpus: set[int]) -> None:
    """Every thread of this process onto `cpus` (one gone meanwhile is skipped)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            continue


def _current_cpu() -> int:
    """The core the calling thread runs on: field 39 of /proc/thread-self/stat."""
    with open("/proc/thread-self/stat", "rb") as fh:
        stat = fh.read()
    # After the command name, which is in parentheses and may hold spaces: fields 3 onwards.
    return int(stat[stat.rindex(b")") + 2 :].split()[36])
