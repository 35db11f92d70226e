"""Benchmark `eventrunner serve`: drop-to-output latency, resident memory, start-up to ready.

Run: python tests/bench/bench_serve.py [--sizes 100,100000] [--drops 50] [--workdir DIR] [--keep]
                                      [--fanin-sizes 100000]

For each size N, a workspace with N files `inbox/{name}.txt` and a two-stage chain
(inbox -> upper -> count) is generated and brought up to date once with `eventrunner run`
(kept in --workdir between invocations, so the 100,000-entity one is built only once). Then:
  1. start-up   `eventrunner serve --port 0` from process start to its "serving" line, with
                nothing stale (median of --starts; the log's "N queued" must be 0)
  2. latency    --drops new files dropped one at a time; each timed from just before the write
                to when `count/{name}.txt` holds the expected text (polled every 1 ms); once
                with the default runtime settings (debounce 50 ms, settle 50 ms) and once with
                settle 0 (EVENTRUNNER_RUNTIME_SETTLE=0s), which isolates the runtime's own cost
  3. status     GET /api/pipelines timed: the first (every state evaluated, with /healthz
                probed every 10 ms meanwhile: the worst answer time says how long the server
                stalled), then again after one more drop (kept up from events)
  4. memory     RSS of the serve process (psutil) after the drops and the status call
  5. with --fanin-sizes: the same pipeline plus a fan-in stage (total.txt): start-up to ready
                after a clean stop (issue 15: <= 1 s at 100,000) and RSS at ready and after
                drops (issue 15: <= 150 MB at 100,000 x 2 stages + a fan-in)
Targets (DESIGN.md section 6): p50 < 100 ms, p50 ratio N=100,000 / N=100 < 1.5, RSS < 300 MB at
100,000 entities x 2 stages, start-up < 3 s at 100,000 entities.

--fanin instead runs issue 15's fan-in rows (see fanin_rows), on the same chain plus a fan-in
`total.txt` summing every count: for each size, `run` cold against `serve` cold start to the
final total (target <= 2x), then drop -> total.txt latency (target p50 < 100 ms) on the built
workspace (kept in --workdir, so a 100,000-entity one is built once).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

# The same workspace as the engine benchmark (this folder is on sys.path when run as a script).
from bench_engine import (
    FANIN_INCREMENTAL_STAGE,
    FANIN_STAGE,
    HANDLERS,
    HANDLERS_INCREMENTAL,
    PIPELINE,
    WORDS,
)

READY_MARK = ".bench-ready"


def eventrunner_cmd() -> list[str]:
    script = Path(sys.executable).parent / "eventrunner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "eventrunner.cli.main"]


def build(ws: Path, n: int, fanin: bool = False) -> float:
    """Generate the workspace and bring it up to date once; returns the `run` time (0 if reused)."""
    if (ws / READY_MARK).exists():
        return 0.0
    shutil.rmtree(ws, ignore_errors=True)
    rng = random.Random(n)
    (ws / "inbox").mkdir(parents=True)
    (ws / "pipelines").mkdir()
    (ws / "handlers").mkdir()
    (ws / "pipelines/bench.toml").write_text(PIPELINE + (FANIN_STAGE if fanin else ""))
    (ws / "handlers/textops.py").write_text(HANDLERS)
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        (ws / f"inbox/e{i:06d}.txt").write_text(words + "\n")
    began = time.perf_counter()
    proc = subprocess.run(
        [*eventrunner_cmd(), "-w", str(ws), "run", "--json", "-j", "2"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - began
    result = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or result.get("executed") != 2 * n + fanin:
        sys.exit(f"run failed ({proc.returncode}): {result}\n{proc.stderr[-2000:]}")
    os.sync()  # so that the first commits under serve do not pay for the generation's writes
    (ws / READY_MARK).touch()
    return elapsed


class Serve:
    """One `eventrunner serve --port 0` process: started, timed to its serving line, stopped."""

    def __init__(self, ws: Path, env: dict[str, str]) -> None:
        self.ws = ws
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        began = time.perf_counter()
        self.proc = subprocess.Popen(
            [*eventrunner_cmd(), "-w", str(ws), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env={**os.environ, **env},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the serving line (or exit)
        self.startup = time.perf_counter() - began
        if not line.startswith("eventrunner: serving"):
            self.stop()
            sys.exit(f"serve did not start: {line!r}\n{self.stderr()[-2000:]}")
        self.url = line.split(" at ", 1)[1].split()[0]
        # Keep draining stdout so the process never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def queued_at_ready(self) -> int:
        for line in self.stderr().splitlines():
            if "ready:" in line and "queued" in line:
                return int(line.rsplit(",", 1)[1].split()[0])
        return -1

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.err.close()
        if code != 0:
            print(f"warning: serve exited {code}", file=sys.stderr)


def drop_latencies(ws: Path, drops: int, tag: str) -> list[float]:
    """Drop new files one at a time; seconds from write to the expected final output."""
    out: list[float] = []
    for i in range(drops):
        name = f"drop-{tag}-{i:03d}"
        words = 100 + i  # a word count no generated file has
        target = ws / f"count/{name}.txt"
        expected = f"{words}\n"
        began = time.perf_counter()
        (ws / f"inbox/{name}.txt").write_text("w " * words + "\n")
        deadline = began + 30
        while True:
            try:
                if target.read_text() == expected:
                    break
            except FileNotFoundError:
                pass
            if time.perf_counter() > deadline:
                sys.exit(f"drop {name} not processed within 30 s")
            time.sleep(0.001)
        out.append(time.perf_counter() - began)
    return out


def status_call(url: str) -> tuple[float, float]:
    """Seconds a GET /api/pipelines takes (every state counted), and the worst /healthz
    answer time meanwhile, probed every 10 ms: how long the server stopped answering."""
    worst, done = 0.0, threading.Event()

    def probe() -> None:
        nonlocal worst
        while not done.is_set():
            began = time.perf_counter()
            urllib.request.urlopen(url + "/healthz", timeout=120).read()
            worst = max(worst, time.perf_counter() - began)
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    began = time.perf_counter()
    urllib.request.urlopen(url + "/api/pipelines", timeout=600).read()
    took = time.perf_counter() - began
    done.set()
    prober.join()
    return took, worst


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def wait_for_total(ws: Path, expected: int, timeout: float = 300) -> None:
    """Until the fan-in's total.txt says `expected` (the drops' word counts added)."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            if int((ws / "total.txt").read_text()) == expected:
                return
        except (FileNotFoundError, ValueError):  # not there, or not a number: not yet
            pass
        if time.perf_counter() > deadline:
            sys.exit(f"total.txt did not reach {expected} within {timeout:.0f} s")
        time.sleep(0.05)


def fanin_start_and_memory(workdir: Path, n: int, starts: int, drops: int) -> list[str]:
    """Rows "serve start-up to ready after a clean stop" (<= 1 s at 100,000) and "serve resident
    memory, N x 2 stages + a fan-in" (<= 150 MB): on the engine benchmark's pipeline with its
    fan-in stage (total.txt over every count), built once under `workdir`."""
    ws = workdir / f"ws-fanin-{n}"
    built = build(ws, n, fanin=True)
    if built:
        print(f"N={n} + fan-in: generated and ran once in {built:.1f} s", file=sys.stderr)
    times, ready_rss = [], []
    for _ in range(starts):
        server = Serve(ws, {})
        queued = server.queued_at_ready()
        ready_rss.append(server.rss_mb())
        server.stop()  # a clean stop: the next start begins from its stamp
        if queued != 0:
            sys.exit(f"N={n} + fan-in: {queued} state(s) stale at start-up; expected none")
        times.append(server.startup)
    server = Serve(ws, {})
    try:
        before = int((ws / "total.txt").read_text())  # settled: nothing was stale at ready
        drop_latencies(ws, drops, f"fanin-{time.strftime('%H%M%S')}")
        # The drops wait for their counts only: measured once the fan-in has caught up with
        # them too (its call's own reading of every member is gone by then), not meanwhile.
        wait_for_total(ws, before + sum(100 + i for i in range(drops)))
        after = server.rss_mb()
    finally:
        server.stop()
    med = statistics.median(times)
    peak = max(after, *ready_rss)
    return [
        f"| serve start-up to ready after a clean stop, {n:,} + fan-in | {med:.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times)}) | <= 1 s | {'ok' if med <= 1 else 'MISSED'} |",
        f"| serve RSS, {n:,} x 2 stages + fan-in: at ready / {drops} drops later, settled "
        f"| {statistics.median(ready_rss):.0f} MB / {after:.0f} MB | <= 150 MB "
        f"| {'ok' if peak <= 150 else 'MISSED'} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100,100000")
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep a temporary workdir")
    parser.add_argument(
        "--fanin-sizes",
        default="",
        help="also the start-up and memory rows with a fan-in at these sizes (e.g. 100000)",
    )
    parser.add_argument("--fanin", action="store_true", help="only the fan-in rows (issue 15)")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="with --fanin: the fan-in total as an incremental handler (a Changes input)",
    )
    parser.add_argument(
        "--cpu-of",
        type=Path,
        default=None,
        help="only: drops into this built fan-in workspace, wall and serve CPU per drop",
    )
    args = parser.parse_args()
    if args.cpu_of is not None:
        fanin_drop_cpu(args.cpu_of, args.drops)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.fanin:
        try:
            fanin_rows(workdir, sizes, args.drops, args.incremental)
        finally:
            if args.workdir is None and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        return
    tag = time.strftime("%H%M%S")
    configs = {"default (settle 50ms)": {}, "settle 0": {"EVENTRUNNER_RUNTIME_SETTLE": "0s"}}
    rows: list[list[str]] = []
    p50s: dict[tuple[str, int], float] = {}
    try:
        for n in sizes:
            ws = workdir / f"ws-{n}"
            built = build(ws, n)
            if built:
                print(f"N={n}: generated and ran once in {built:.1f} s", file=sys.stderr)
            starts = []
            for _ in range(args.starts):
                server = Serve(ws, {})
                queued = server.queued_at_ready()
                server.stop()
                if queued != 0:
                    sys.exit(f"N={n}: {queued} state(s) stale at start-up; expected none")
                starts.append(server.startup)
            for label, env in configs.items():
                server = Serve(ws, env)
                try:
                    lat = drop_latencies(ws, args.drops, f"{tag}-{len(p50s)}")
                    status, stall = status_call(server.url)
                    drop_latencies(ws, 1, f"{tag}-{len(p50s)}-s")  # one event since
                    again, _ = status_call(server.url)
                    rss = server.rss_mb()
                finally:
                    server.stop()
                p50s[(label, n)] = statistics.median(lat)
                rows.append(
                    [
                        f"{n:,}",
                        label,
                        ms(statistics.median(lat)),
                        ms(pct(lat, 0.99)),
                        ms(max(lat)),
                        f"{rss:.0f} MB",
                        f"{statistics.median(starts):.2f} s",
                        f"{status:.2f} s / {ms(again)}",
                        ms(stall),
                    ]
                )
        fanin = [
            row
            for n in (int(x) for x in args.fanin_sizes.split(",") if x)
            for row in fanin_start_and_memory(workdir, n, args.starts, min(args.drops, 20))
        ]
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            print(f"kept {workdir}", file=sys.stderr)
    head = ["entities", "runtime settings", "p50", "p99", "max", "RSS after", "start-up"]
    head += ["status: first / after a drop", "healthz worst during first"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"drop -> count/ latency over {args.drops} sequential drops; start-up = median of "
          f"{args.starts} (process start to serving line, nothing stale)")  # fmt: skip
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    if fanin:
        print("| measurement | measured | target | |\n|---|---|---|---|")
        print("\n".join(fanin))
    if len(sizes) >= 2:
        small, big = min(sizes), max(sizes)
        for label in configs:
            ratio = p50s[(label, big)] / p50s[(label, small)]
            print(f"p50 ratio N={big:,} / N={small:,} ({label}): {ratio:.2f}")


def fanin_workspace(ws: Path, n: int, incremental: bool = False) -> int:
    """The chain plus a fan-in total over every count, not yet run; returns the expected total.
    `incremental`: the total is the incremental handler (bench_engine.HANDLERS_INCREMENTAL)."""
    shutil.rmtree(ws, ignore_errors=True)
    rng = random.Random(n)
    for folder in ("inbox", "pipelines", "handlers"):
        (ws / folder).mkdir(parents=True)
    stage = FANIN_INCREMENTAL_STAGE if incremental else FANIN_STAGE
    (ws / "pipelines/bench.toml").write_text(PIPELINE + stage)
    (ws / "handlers/textops.py").write_text(HANDLERS)
    if incremental:
        (ws / "handlers/textops_inc.py").write_text(HANDLERS_INCREMENTAL)
    total = 0
    for i in range(n):
        k = rng.randint(1, 12)
        total += k
        (ws / f"inbox/e{i:06d}.txt").write_text(
            " ".join(rng.choice(WORDS) for _ in range(k)) + "\n"
        )
    os.sync()
    return total


def wait_for(path: Path, text: str, deadline: float, what: str) -> float:
    """Poll (every 1 ms) until `path` holds `text`; the time it did."""
    while True:
        try:
            if path.read_text() == text:
                return time.perf_counter()
        except FileNotFoundError:
            pass
        if time.perf_counter() > deadline:
            sys.exit(f"{what}: {path.name} did not reach {text!r} in time")
        time.sleep(0.001)


def fanin_rows(workdir: Path, sizes: list[int], drops: int, incremental: bool = False) -> None:
    """Per size: cold `run` vs cold `serve` to the final total; then drop -> total.txt.
    `incremental`: with the incremental fan-in handler, in workspaces of their own."""
    rows: list[list[str]] = []
    for n in sizes:
        ws = workdir / f"fanin-{n}{'-incremental' if incremental else ''}"
        ready = ws / READY_MARK
        cold_run = cold_serve = 0.0
        if not ready.exists():
            total = fanin_workspace(ws, n, incremental)
            began = time.perf_counter()
            proc = subprocess.run(
                [*eventrunner_cmd(), "-w", str(ws), "run", "--json", "-j", "2"],
                capture_output=True,
                text=True,
            )
            cold_run = time.perf_counter() - began
            if proc.returncode != 0 or (ws / "total.txt").read_text() != f"{total}\n":
                sys.exit(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
            if n <= 20_000:  # serve's own cold start, on a second fresh copy
                fanin_workspace(ws, n, incremental)
                began = time.perf_counter()
                server = Serve(ws, {})
                try:
                    wait_for(ws / "total.txt", f"{total}\n", began + 3600, "serve cold start")
                    cold_serve = time.perf_counter() - began
                finally:
                    server.stop()
            (ws / ".bench-total").write_text(str(total))
            ready.touch()
        total = int((ws / ".bench-total").read_text())
        server = Serve(ws, {})
        lat: list[float] = []
        try:
            for i in range(drops):
                words = 100 + i
                total += words
                began = time.perf_counter()
                (ws / f"inbox/drop-{time.strftime('%H%M%S')}-{i:03d}.txt").write_text("w " * words)
                done = wait_for(ws / "total.txt", f"{total}\n", began + 60, "drop")
                lat.append(done - began)
            startup = server.startup
        finally:
            server.stop()
            (ws / ".bench-total").write_text(str(total))
        ratio = f"{cold_serve / cold_run:.2f}x" if cold_serve else "(built before)"
        rows.append(
            [
                f"{n:,}",
                f"{cold_run:.1f} s" if cold_run else "-",
                f"{cold_serve:.1f} s" if cold_serve else "-",
                ratio,
                f"{startup:.2f} s",
                ms(statistics.median(lat)),
                ms(pct(lat, 0.9)),
                ms(max(lat)),
            ]
        )
    head = ["entities", "run cold", "serve cold to total", "serve/run (<= 2x)", "serve start-up"]
    head += ["drop -> total p50 (< 100 ms)", "p90", "max"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    kind = "incremental handler (Changes)" if incremental else "handler reading every member"
    print(
        f"fan-in (inbox -> upper -> count -> total.txt, {kind}), {drops} sequential drops per size"
    )
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def fanin_drop_cpu(ws: Path, drops: int, warm: int = 1) -> None:
    """Drops into a built fan-in workspace under serve (after `warm` drops, timed apart: the
    first reads the aggregate's member table, or walks every member when serve did not start
    from a stamp): wall to the new total.txt and the serve process's CPU (user + system) per
    drop, p50 of each, and RSS after (issue 15's rows)."""
    total = int((ws / "total.txt").read_text())
    server = Serve(ws, {})
    proc = psutil.Process(server.proc.pid)
    lat: list[float] = []
    cpu: list[float] = []
    first: list[float] = []
    try:
        for i in range(warm + drops):
            total += 100 + i
            c0 = sum(proc.cpu_times()[:2])
            began = time.perf_counter()
            (ws / f"inbox/drop-cpu-{time.strftime('%H%M%S')}-{i:03d}.txt").write_text(
                "w " * (100 + i)
            )
            done = wait_for(ws / "total.txt", f"{total}\n", began + 900, "drop")
            time.sleep(0.3)  # the commit's tail (index, events) counts in this drop's CPU
            if i >= warm:
                lat.append(done - began)
                cpu.append(sum(proc.cpu_times()[:2]) - c0)
            else:
                first.append(done - began)
        rss = server.rss_mb()
    finally:
        server.stop()
    print(
        f"drop -> total.txt over {drops} drops ({ws.name}): p50 {ms(statistics.median(lat))} "
        f"(p90 {ms(pct(lat, 0.9))}), serve CPU p50 {ms(statistics.median(cpu))}, "
        f"RSS after {rss:.0f} MB, start-up {server.startup:.2f} s; the first {warm} drop(s) "
        f"{', '.join(ms(x) for x in first)}"
    )


if __name__ == "__main__":
    main()
