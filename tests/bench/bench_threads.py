"""Where a cold run's CPU goes, per thread: the event loop, the handler threads, the committer.

Issue 15 point 4 (cold throughput, >= 2,000 executions/s at 10k x 2 stages, -j2) is bound by the
GIL: on 2 cores the run gets about one core of Python, so what counts is CPU per execution on
every thread together, user and system (each blocking call is also a GIL hand-off, paid in
futex system time). This prints, per cold run of `eventrunner run --json -j N` on a fresh copy
of the bench workspace (bench_engine.build: map -> map), each thread kind's user and system CPU
per execution, and executions/s.

    python tests/bench/bench_threads.py --entities 2000 --repeat 5
    python tests/bench/bench_threads.py --trees /tmp/A:. --entities 2000 --repeat 5

`--trees` alternates runs between source trees (put first on PYTHONPATH), A, B, A, B, ..., so
that both see the same machine load: compare them in pairs, never across hours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fsprobe
from bench_engine import build

_NOT_CPU = ("wall", "executed", "probe")  # what a run's dict holds besides CPU seconds

# Run inside the measured process: wraps threading.Thread.run to read each thread's own CPU
# (/proc/thread-self/stat) as it ends, and the main thread's at exit; prints one JSON line.
WRAPPER = r"""
import json, os, sys, threading, time
tck = os.sysconf("SC_CLK_TCK")
acc = {}
lock = threading.Lock()
def cpu():
    f = open("/proc/thread-self/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / tck, int(f[12]) / tck
def kind(name):
    if name.startswith("eventrunner-handler"):
        return "handlers"
    return "committer" if name.startswith("asyncio") else "other"
orig = threading.Thread.run
def run(self):
    try:
        orig(self)
    finally:
        u, s = cpu()
        with lock:
            a = acc.setdefault(kind(self.name), [0.0, 0.0])
            a[0] += u; a[1] += s
threading.Thread.run = run
t0 = time.perf_counter()
sys.argv = ["eventrunner", *sys.argv[1:]]
from eventrunner.cli.main import main
try:
    main()
finally:
    acc["loop"] = list(cpu())
    acc["wall"] = [time.perf_counter() - t0, 0.0]
    print(json.dumps(acc), file=sys.stderr)
"""


def one_run(template: Path, tree: str | None, jobs: int, root: Path) -> dict[str, list[float]]:
    """A cold run on a fresh copy of the template, below `root` (deleted only after the last
    run: see fsprobe.py); per-thread-kind [user, system] seconds, and the creation probe."""
    work = Path(tempfile.mkdtemp(prefix="er-threads-", dir=root))
    shutil.copytree(template, work / "er", symlinks=True)
    probe = fsprobe.create_us(root)
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", WRAPPER, "-w", str(work / "er"), "run", "--json"]
    proc = subprocess.run([*cmd, "-j", str(jobs)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    acc: dict[str, list[float]] = json.loads(proc.stderr.strip().splitlines()[-1])
    acc["executed"] = [float(result["executed"]), 0.0]
    acc["probe"] = [probe, 0.0]
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tree (default 3)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--trees", default="", help="source trees to alternate, ':'-separated")
    args = parser.parse_args()
    trees = [t for t in args.trees.split(":") if t] or [""]
    root = Path(tempfile.mkdtemp(prefix="er-threads-tpl-"))
    rows: dict[str, list[dict[str, list[float]]]] = {t: [] for t in trees}
    try:
        _, template, _ = build(root, args.entities, seed=1)
        for _ in range(args.repeat):
            for tree in trees:  # alternated: each tree sees the same load
                run = one_run(template, tree or None, args.jobs, root)
                rows[tree].append(run)
                cpu = {k: round(sum(v), 2) for k, v in run.items() if k not in _NOT_CPU}
                print(f"  {tree or '(installed)'}: {cpu}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # every copy at once, after the last run
    kinds = ("loop", "handlers", "committer")
    head = ["tree", "executions/s", "CPU/execution", *(f"{k} u+s us" for k in kinds)]
    head.append("file creation (fsprobe)")
    print(
        f"cold runs, {args.entities:,} entities x 2 stages, -j{args.jobs} (median of {args.repeat})"
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    med = statistics.median
    for tree, runs in rows.items():
        n = runs[0]["executed"][0]
        total = [sum(sum(v) for k, v in r.items() if k not in _NOT_CPU) for r in runs]
        cells = [
            tree or "(installed)",
            f"{med(n / r['wall'][0] for r in runs):,.0f}/s",
            f"{med(total) / n * 1e6:,.0f} us",
        ]
        for k in kinds:
            u = med(r.get(k, [0.0, 0.0])[0] for r in runs) / n * 1e6
            s = med(r.get(k, [0.0, 0.0])[1] for r in runs) / n * 1e6
            cells.append(f"{u:,.0f} + {s:,.0f}")
        cells.append(fsprobe.fmt_us(med(r["probe"][0] for r in runs)))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
