"""Benchmark the executors: a CPU-bound handler through thread, process and Dask, and the
throughput of a trivial handler through Dask (batched and not).

Run: .venv/bin/python tests/bench/bench_executors.py [--entities 400] [--ms 50] [--trivial 2000]

A workspace of N inputs and one stage whose handler spins ~50 ms of pure Python (calibrated
here first) runs once per executor, through the engine as `eventrunner run` drives it, timed
from the first dispatch to the last commit: the thread executor (2 threads), the process
executor (2 processes), and the Dask executor on a `dask scheduler` with 1 and then 2
`dask worker` processes (one thread each) started by this script; their start-up and the
client's connection are timed apart. Every run's outputs are checked equal to the thread run's.
Then a trivial handler over --trivial inputs runs through Dask with 2 workers, with batching
and with batching off (one task per call), and through the thread executor for reference.
Numbers depend heavily on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: dask_helpers

from dask_helpers import cluster

from eventrunner.run import dask_batch, dask_pool
from eventrunner.run.engine import Engine
from eventrunner.run.executors import Executor
from eventrunner.run.process_pool import ProcessExecutor
from eventrunner.run.thread_pool import ThreadExecutor
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

HANDLERS = '''\
def spin(n: int) -> int:
    """Pure Python work: n rounds of integer arithmetic (holds the GIL throughout)."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def burn(ctx, t: str) -> str:
    return f"{t.strip()} {spin(ctx.params['loops'])}\\n"


def trivial(t: str) -> str:
    return t.upper()
'''

PIPELINE = """\
[stages.work]
handler = "h:{handler}"
inputs = {{ t = "in/{{n}}.txt" }}
output = "out/{{n}}.txt"
params = {{ loops = {loops} }}
"""


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def calibrate(ms: float) -> int:
    """Loop rounds taking about `ms` milliseconds here (best of 5)."""
    n = 100_000
    best = min(_timed(spin, n) for _ in range(5))
    return max(1000, int(n * ms / 1000 / best))


def _timed(fn: Callable[[int], Any], n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def workspace(base: Path, name: str, handler: str, loops: int, n: int) -> Path:
    root = base / name
    (root / "pipelines").mkdir(parents=True)
    (root / "handlers").mkdir()
    (root / "in").mkdir()
    (root / "pipelines/b.toml").write_text(PIPELINE.format(handler=handler, loops=loops))
    (root / "handlers/h.py").write_text(HANDLERS)
    for i in range(n):
        (root / f"in/{i}.txt").write_text(f"item {i}\n")
    return root


async def drain(root: Path, executor: Executor) -> tuple[float, int]:
    """(seconds from the first dispatch to the last commit, calls succeeded)."""
    ws = load_workspace(root)
    store = Store(ws.settings.state_dir)
    index = Index.load(ws, store)
    engine = Engine(index, store, jobs=2, executor=executor)
    engine.consider(engine.planner.all_targets(), fresh_pass=True)
    t0 = time.perf_counter()
    outcome = await engine.drain()
    return time.perf_counter() - t0, outcome.succeeded


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((root / "out").iterdir(), key=lambda p: int(p.stem)):
        h.update(path.read_bytes())
    return h.hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=400)
    p.add_argument("--ms", type=float, default=50.0, help="CPU time per call (calibrated)")
    p.add_argument("--trivial", type=int, default=2000, help="calls of the trivial handler")
    p.add_argument("--repeat", type=int, default=1, help="rounds (best of); rows interleave")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    try:
        with contextlib.ExitStack() as stack:
            clusters, notes = {}, {}
            for workers in (1, 2):
                t0 = time.perf_counter()
                names = {f"w{i}": () for i in range(workers)}
                clusters[workers] = stack.enter_context(
                    cluster(base / f"cluster{workers}", "bench", names)
                )
                notes[workers] = f"cluster up {time.perf_counter() - t0:.1f}s"
            failed = cpu_table(base, args, clusters, notes)
        failed |= trivial_table(base, args.trivial)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


def cpu_table(
    base: Path, args: argparse.Namespace, clusters: dict[int, Any], notes: dict[int, str]
) -> bool:
    """The CPU-bound rows, best of --repeat rounds; True when a run failed or differed."""
    loops, n = calibrate(args.ms), args.entities
    print(f"calibrated: {loops} rounds ~ {args.ms:.0f} ms per call; {n} calls", flush=True)
    configs: list[tuple[str, str, Callable[[], Executor]]] = [
        ("thread", "2 threads", lambda: ThreadExecutor(2)),
        ("process", "2 processes", lambda: ProcessExecutor(2)),
    ]
    for workers, c in clusters.items():
        configs.append(
            (
                "dask",
                f"{workers} worker{'s' if workers > 1 else ''}",
                lambda a=c.address: dask_pool.DaskExecutor(scheduler=a, workers=1, shared_fs=False),
            )
        )
    best: dict[int, float] = {}
    failed, ref = False, ""
    for rnd in range(args.repeat):
        for i, (name, workers, make) in enumerate(configs):
            root = workspace(base, f"cpu-{rnd}-{i}", "burn", loops, n)
            seconds, ok = asyncio.run(timed_run(make, root))
            ref = ref or digest(root)
            if ok != n or digest(root) != ref:
                print(f"  {name} {workers}: {ok} of {n} succeeded or outputs differ", flush=True)
                failed = True
            best[i] = min(best.get(i, seconds), seconds)
            print(f"  round {rnd + 1}: {name} {workers}: {seconds:.1f}s", flush=True)
    print()
    print(f"CPU-bound handler (~{args.ms:.0f} ms of pure Python per call), {n} calls, 2 cores")
    print()
    print("| executor | workers | seconds | calls/s | speed-up vs thread | note |")
    print("|---|---|---|---|---|---|")
    for i, (name, workers, _) in enumerate(configs):
        note = notes.get(int(workers[0]), "") if name == "dask" else ""
        print(
            f"| {name} | {workers} | {best[i]:.1f} | {n / best[i]:.1f} | "
            f"{best[0] / best[i]:.2f}x | {note} |"
        )
    return failed


async def timed_run(make: Callable[[], Executor], root: Path) -> tuple[float, int]:
    pool = make()
    try:
        await pool.start()
        return await drain(root, pool)
    finally:
        await pool.close()


def trivial_table(base: Path, n: int) -> bool:
    """Trivial-handler throughput: thread, Dask batched, Dask one task per call."""
    rows = []
    root = workspace(base, "triv-thread", "trivial", 0, n)

    async def threads() -> tuple[float, int]:
        pool = ThreadExecutor(2)
        try:
            return await drain(root, pool)
        finally:
            await pool.close()

    seconds, ok = asyncio.run(threads())
    rows.append(("thread", "2 threads", seconds, ok, "-"))
    with cluster(base / "cluster-triv", "bench", {"w0": (), "w1": ()}) as c:
        for label, batch_max in (
            ("dask, batched", dask_batch.BATCH_MAX),
            ("dask, 1 call per task", 1),
        ):
            saved, dask_batch.BATCH_MAX = dask_batch.BATCH_MAX, batch_max
            try:
                root = workspace(base, f"triv-{batch_max}", "trivial", 0, n)
                pool = dask_pool.DaskExecutor(scheduler=c.address, workers=1, shared_fs=False)

                async def run(
                    pool: dask_pool.DaskExecutor = pool, root: Path = root
                ) -> tuple[float, int]:
                    await pool.start()
                    try:
                        return await drain(root, pool)
                    finally:
                        await pool.close()

                seconds, ok = asyncio.run(run())
            finally:
                dask_batch.BATCH_MAX = saved
            rows.append((label, "2 workers", seconds, ok, str(pool.batches)))
    print()
    print(f"Trivial handler (t.upper()), {n} calls, through the engine with commits")
    print()
    print("| executor | workers | seconds | calls/s | Dask tasks |")
    print("|---|---|---|---|---|")
    for label, workers, seconds, ok, tasks in rows:
        print(f"| {label} | {workers} | {seconds:.2f} | {ok / seconds:.0f} | {tasks} |")
    return any(ok != n for *_, ok, _ in rows)


if __name__ == "__main__":
    sys.exit(main())
