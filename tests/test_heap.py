"""state/heap.py on glibc: serve's threads share one malloc arena (heap.one_arena).

Each check is a real subprocess on glibc's allocator (PYTHONMALLOC=malloc, as serve runs)
whose threads allocate, then reports how many heaps glibc's malloc_info lists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """\
import ctypes, sys, threading
from eventrunner.state import heap

if sys.argv[1] == "one":
    assert heap.one_arena()


def allocate() -> None:
    kept = [bytearray(4096) for _ in range(2000)]
    del kept


threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
fp = libc.fopen(sys.argv[2].encode(), b"w")
assert libc.malloc_info(0, ctypes.c_void_p(fp)) == 0
libc.fclose(ctypes.c_void_p(fp))
"""


def _heaps(tmp_path: Path, mode: str) -> int:
    out = tmp_path / f"{mode}.xml"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONMALLOC": "malloc"},
    )
    assert proc.returncode == 0, proc.stderr
    return out.read_text().count("<heap nr=")


@pytest.mark.skipif(
    sys.platform != "linux" or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's malloc only",
)
def test_one_arena_keeps_every_thread_on_the_main_heap(tmp_path: Path) -> None:
    # Given threads that allocate at the same time, glibc gives them arenas of their own
    assert _heaps(tmp_path, "default") > 1
    # When the process asked for one arena first, they all share the main one
    assert _heaps(tmp_path, "one") == 1
