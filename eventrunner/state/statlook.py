"""The stats of a look (fastpath.py): which recorded paths no longer have their recorded stats.

Imports nothing heavy: the no-change `run` calls it before anything else.
"""

from __future__ import annotations

import os
from array import array

LOOK_THREADS = max(1, min(4, os.cpu_count() or 1))  # threads of a long look's stats
ABSENT = (
    -1,
    -1,
    -1,
)  # the recorded stats of a path recorded as missing (a missing eventrunner.toml)
LOOK_SPLIT_MIN = 2048  # paths per thread at least: below that, starting one costs more


def differing(paths: list[str], stats: array[int]) -> list[str]:
    """The paths whose stats are not the recorded ones (gone ones too), in recorded order.

    One stat per path, and the stats are most of a look's time (30,000 at 10,000 entities):
    os.stat releases the GIL, so a long list is split between LOOK_THREADS threads. Each path
    is compared exactly as in one thread (a racy one, recorded with mtime -1, never matches)."""
    n = len(paths)
    parts = min(LOOK_THREADS, n // LOOK_SPLIT_MIN) if n >= 2 * LOOK_SPLIT_MIN else 1
    if parts <= 1:
        return _differs_in(paths, stats, 0, n)
    import threading  # here: a short look (or a no-change run's few paths) stays lean

    bounds = [n * i // parts for i in range(parts + 1)]
    found: list[list[str]] = [[] for _ in range(parts)]
    errors: list[BaseException] = []

    def part(i: int) -> None:
        try:
            found[i] = _differs_in(paths, stats, bounds[i], bounds[i + 1])
        except BaseException as exc:  # re-raised below: never a silently short answer
            errors.append(exc)

    threads = [threading.Thread(target=part, args=(i,), daemon=True) for i in range(1, parts)]
    for t in threads:
        t.start()
    part(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [path for chunk in found for path in chunk]


def _differs_in(paths: list[str], stats: array[int], lo: int, hi: int) -> list[str]:
    """_differs for paths[lo:hi]."""
    st = os.stat
    out = []
    triples = iter(stats[3 * lo : 3 * hi])  # (size, mtime_ns, inode) per path, no indexing
    for path, size, mtime_ns, ino in zip(paths[lo:hi], triples, triples, triples, strict=True):
        try:
            s = st(path)
        except OSError:
            if (size, mtime_ns, ino) != ABSENT:
                out.append(path)
            continue
        if s.st_mtime_ns != mtime_ns or s.st_size != size or s.st_ino != ino:
            out.append(path)
    return out
