"""What one file creation costs on this filesystem right now: printed beside the cold-run rows.

A cold run creates two files per execution (its output's and its manifest's temp files), so
its throughput follows this cost, and the cost moves. On ext4 without a journal (this
machine's root: /proc/fs/jbd2 is empty), a creation skips every inode of its block group
that was freed in the last 60 s (300 s while that inode's table block is dirty; ext4's
find_inode_bit and recently_deleted): right after a mass delete, such as a previous run's
temp workspace, one creation cost 600-1,000 us of CPU instead of 17-20 us, and a cold run
halved. So the benchmarks delete their temp copies only after their last timed run, and
print this probe, which tells a slow figure from a slow filesystem.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def create_us(where: Path, n: int = 50) -> float:
    """CPU microseconds per file created in a new folder below `where`, which keeps them:
    deleting them here would slow the next creations (the caller deletes `where` at its end).
    Few files, so the probe's own files barely add to what later creations skip."""
    folder = tempfile.mkdtemp(prefix="probe-", dir=where)
    t0 = time.process_time()
    for i in range(n):
        os.close(os.open(os.path.join(folder, f"p{i}"), os.O_WRONLY | os.O_CREAT, 0o644))
    return (time.process_time() - t0) * 1e6 / n


def fmt_us(us: float) -> str:
    return f"{us:,.0f} us"
