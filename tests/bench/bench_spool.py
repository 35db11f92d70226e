"""Benchmark the webhook spool: 32 concurrent writers, durable acks per second and latency.

Run: python tests/bench/bench_spool.py [--seconds 5] [--writers 32] [--body 1024]
Works in tests/bench/work/ (ignored by git), emptied before and after each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eventrunner.server.spool import Spool, SpoolRecord

WORK = Path(__file__).resolve().parent / "work" / "spool"


async def run_mode(
    fsync: bool, writers: int, seconds: float, body_size: int, journal_mb: float = 32
) -> dict[str, float]:
    shutil.rmtree(WORK, ignore_errors=True)
    latencies: list[float] = []
    body = (b'{"event": "bench", "pad": "' + b"x" * body_size)[:body_size] + b'"}'
    stop_at = 0.0

    async def writer(spool: Spool, w: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            record = SpoolRecord(f"bench/w{w:02d}/{n % 64:02d}.json", body, f"w{w}-{n}")
            began = time.perf_counter()
            await spool.put(record)
            latencies.append(time.perf_counter() - began)
            n += 1

    journal_max = int(journal_mb * (1 << 20))
    async with Spool(
        WORK / "spool", WORK / "data", fsync=fsync, journal_max_bytes=journal_max
    ) as spool:
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(writer(spool, w) for w in range(writers)))
        elapsed = time.perf_counter() - started
        stats = dict(spool.stats)
    shutil.rmtree(WORK, ignore_errors=True)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "acks": len(latencies) / elapsed,
        "p50": cuts[49] * 1000,
        "p99": cuts[98] * 1000,
        "batches": stats["batches"],
        "per_batch": stats["committed"] / max(stats["batches"], 1),
        "fsync_ms": stats["fsync_seconds_total"] / max(stats["batches"], 1) * 1000,
        "rotations": stats["rotations"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument(
        "--journal-mb", type=float, default=32, help="rotate the journal at this size"
    )
    args = parser.parse_args()
    print(
        f"{args.writers} writers, {args.seconds:g} s per mode, {args.body} B bodies, "
        f"journal rotated at {args.journal_mb:g} MiB, {os.cpu_count()} CPUs"
    )
    columns = ["mode     ", "  acks/s", " p50 ms", " p99 ms", "fsync batches", "puts/batch"]
    columns += ["fsync ms", "rotations"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    for fsync in (True, False):
        r = asyncio.run(run_mode(fsync, args.writers, args.seconds, args.body, args.journal_mb))
        mode = "fsync on" if fsync else "fsync off"
        print(
            f"| {mode:9} | {r['acks']:8.0f} | {r['p50']:7.2f} | {r['p99']:7.2f} "
            f"| {r['batches']:13.0f} | {r['per_batch']:10.1f} | {r['fsync_ms']:8.3f} "
            f"| {r['rotations']:9.0f} |"
        )


if __name__ == "__main__":
    main()
