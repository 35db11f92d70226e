"""Benchmark the dashboard at scale: server time and HTML size of every page.

Run: python tests/bench/bench_dashboard.py [--entities 100000] [--requests 20] [--workdir DIR]

Builds (or reuses, with --workdir) the workspace of bench_serve.py: N files `inbox/{name}.txt`
and a two-stage chain, brought up to date once with `eventrunner run`. Then starts `eventrunner
serve`, holds --held states of the second stage (so the failures page and a filtered listing
have something to group and list), warms the state table with one status call, and requests
each page --requests times in a row, timing each from request to the last byte on loopback.
Prints the median, p95 and max time and the HTML size per page. Targets (issue 11): overview
and a stage's first page each under 100 ms at 100,000 entities; every page under 200 KB. Exits
non-zero when a target is missed. The holds are released before it stops.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# bench_serve's workspace and serve process (this folder is on sys.path when run as a script).
from bench_serve import Serve, build, ms, pct

TIME_TARGET = 0.100
SIZE_TARGET = 200 * 1024
TIMED = ("overview", "stage, first page")


def fetch(url: str) -> tuple[float, int, int]:
    """(seconds to the last byte, status, body bytes) of one GET."""
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        body = resp.read()
        status = resp.status
    return time.perf_counter() - began, status, len(body)


def post(url: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()


def pages(n: int) -> dict[str, str]:
    mid = f"e{n // 2:06d}"
    return {
        "overview": "/",
        "graph": "/graph",
        "stage, first page": "/stages/bench.upper",
        "stage, a page deep in": f"/stages/bench.upper?after={mid}",
        "stage, state filter": "/stages/bench.count?state=held",
        "stage, id glob": "/stages/bench.upper?id=e0*5",
        "stage, reason filter": "/stages/bench.count?reason=HELD",
        "entity": f"/entities/{mid}",
        "failures": "/failures",
        "events": "/events",
        "activity": "/activity",
        "bulk preview (all)": "/actions/preview?action=rerun_down&stage=bench.upper",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    n = args.entities
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ws = workdir / f"ws-{n}"
    rows: list[list[str]] = []
    missed: list[str] = []
    try:
        built = build(ws, n)
        if built:
            print(f"N={n:,}: generated and ran once in {built:.1f} s", file=sys.stderr)
        server = Serve(ws, {})
        held = [f"e{i:06d}" for i in range(0, n, max(1, n // args.held))][: args.held]
        try:
            post(server.url + "/api/pipelines/bench/hold", {"stage": "count", "entities": held})
            warm, _, _ = fetch(server.url + "/api/pipelines")  # the first full pass of the table
            print(f"state table warmed in {warm:.2f} s", file=sys.stderr)
            for name, path in pages(n).items():
                fetch(server.url + path)  # templates compiled, layout cached
                times, size = [], 0
                for _ in range(args.requests):
                    took, status, size = fetch(server.url + path)
                    if status != 200:
                        sys.exit(f"{path} answered {status}")
                    times.append(took)
                median = statistics.median(times)
                over_time = name in TIMED and median >= TIME_TARGET
                over_size = size >= SIZE_TARGET
                if over_time or over_size:
                    missed.append(name)
                target = "< 100 ms, < 200 KB" if name in TIMED else "< 200 KB"
                verdict = "MISSED" if over_time or over_size else "ok"
                rows.append(
                    [name, ms(median), ms(pct(times, 0.95)), ms(max(times)),
                     f"{size / 1024:.1f} KB", target, verdict]
                )  # fmt: skip
        finally:
            post(server.url + "/api/pipelines/bench/release", {"stage": "count"})
            server.stop()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    head = ["page", "median", "p95", "max", "HTML", "target", ""]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"dashboard pages at {n:,} entities x 2 stages, {args.requests} requests each "
          f"(loopback, request to last byte), {len(held):,} states held")  # fmt: skip
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    if missed:
        sys.exit(f"targets missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
