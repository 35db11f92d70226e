"""The stats of a look (fastpath.py): which recorded paths no longer have their recorded stats.

Imports nothing heavy: the no-change `run` calls it before anything else. One thread: splitting
the stats between threads (os.stat releases the GIL) measured no faster on 2 busy cores, at
30,000 or 301,000 paths (issue 15i), and cost CPU for the handoffs.
"""

from __future__ import annotations

import os
from array import array

ABSENT = (
    -1,
    -1,
    -1,
)  # the recorded stats of a path recorded as missing (a missing eventrunner.toml)


def differing(paths: list[str], stats: array[int]) -> list[str]:
    """The paths whose stats are not the recorded ones (gone ones too, unless recorded ABSENT),
    in recorded order. A racy path, recorded with mtime -1, never matches."""
    st = os.stat
    out = []
    triples = iter(stats)  # (size, mtime_ns, inode) per path, no indexing
    for path, size, mtime_ns, ino in zip(paths, triples, triples, triples, strict=True):
        try:
            s = st(path)
        except OSError:
            if (size, mtime_ns, ino) != ABSENT:
                out.append(path)
            continue
        if s.st_mtime_ns != mtime_ns or s.st_size != size or s.st_ino != ino:
            out.append(path)
    return out
