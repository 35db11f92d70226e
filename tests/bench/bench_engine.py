"""Benchmark `eventrunner run` against GNU make doing the same two-stage work.

Run: python tests/bench/bench_engine.py [--entities 10000] [--repeat 5] [--jobs 2] [--keep]
     python tests/bench/bench_engine.py --one-change-at 100000 [--fanin] [--workdir DIR] [--repeat 5]

Generates, under a temp folder, N text files `inbox/{name}.txt` and two equal workspaces:
  make/  a Makefile: upper/%.txt <- inbox/%.txt (tr a-z A-Z), count/%.txt <- upper/%.txt (wc -w)
  er/    an eventrunner pipeline with the same two stages as plain Python handlers
then times whole processes (time.perf_counter around subprocess.run):
  1. cold run              2N stage executions / wall time (eventrunner run -j J vs make -jJ)
  2. no-change run         eventrunner run vs make -q and make -jJ (median of --repeat)
  3. one input changed     eventrunner run vs make -jJ, a different file each time (median)
  4. no-change, cold index eventrunner run after .eventrunner/index.sqlite is deleted (median)
  5. with a fan-in        the same pipeline plus a third stage summing every count into
                           total.txt (make: total.txt <- every count/%.txt): cold run and one
                           input changed, and the cold run's cost against the pipeline without it
and checks that both tools produced byte-identical outputs on a sample of files.
With --one-change-at N (e.g. 100000) only the one-changed-input rows are measured, at N
entities, on workspaces built once and kept under --workdir (whole process, make -r beside);
--fanin adds the fan-in stage to both (make's total.txt rule reads every count, as the handler).
The temp folder is removed at the end unless --keep.

--scaling instead runs the cold-run rows of issue 15 alone (see cold_scaling): at each size of
--sizes (default 1000,10000; --full adds 100000) a cold run of the two-stage chain and of the
same with the fan-in, with wall time and CPU seconds (user + system of the child) per execution.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
import fsprobe

WORDS = [
    "event",
    "driven",
    "functions",
    "keep",
    "files",
    "fresh",
    "one",
    "entity",
    "at",
    "a",
    "time",
    "hello",
    "world",
    "stage",
    "handler",
    "manifest",
    "index",
    "stale",
    "input",
    "output",
    "pipeline",
    "make",
    "rule",
    "target",
]

PIPELINE = """\
name = "bench"

[sources.inbox]
pattern = "inbox/{name}.txt"

[stages.upper]
handler = "textops:upper"
inputs  = { data = "inbox/{name}.txt" }
output  = "upper/{name}.txt"

[stages.count]
handler = "textops:count"
inputs  = { data = "upper/{name}.txt" }
output  = "count/{name}.txt"
"""

HANDLERS = '''\
"""Bench handlers: byte-for-byte what `tr a-z A-Z` and `wc -w` print (ASCII input)."""


def upper(data: bytes) -> bytes:
    return data.upper()


def count(data: bytes) -> str:
    return f"{len(data.split())}\\n"


def total(data: dict[str, bytes]) -> str:
    return f"{sum(int(v) for v in data.values())}\\n"
'''

FANIN_STAGE = """
[stages.total]
handler = "textops:total"
inputs  = { data = "count/{name}.txt" }
output  = "total.txt"
"""

# The same fan-in as an incremental handler (README: incremental fan-in): a drop reads only the
# new member and adds it to the previous total. A sum cannot take back a member's old share, so
# a changed or removed member asks for a full call. A module of its own, so that the `textops`
# module (and the rows built on it) stay as they are on trees without `Changes`.
HANDLERS_INCREMENTAL = '''\
"""The bench's fan-in total as an incremental handler."""

from eventrunner import Changes, NeedFullCall


def total(data: Changes[bytes]) -> str:
    if data.changed or data.removed:
        raise NeedFullCall()
    start = 0 if data.previous is None else int(data.previous)
    return f"{start + sum(int(v) for v in data.added.values())}\\n"
'''

FANIN_INCREMENTAL_STAGE = FANIN_STAGE.replace("textops:total", "textops_inc:total")

FANIN_RULE = """
all: total.txt

# the member list goes through a file: 10,000s of names exceed one command line's limit
total.txt: $(COUNTS)
\t$(file >$@.in,$^)
\txargs cat < $@.in | awk '{ s += $$1 } END { print s }' > $@
"""

MAKEFILE = """\
# no built-in implicit rules: otherwise make tries dozens of them (RCS, SCCS, %.c, ...) per file
MAKEFLAGS += --no-builtin-rules
.SUFFIXES:

SRCS   := $(wildcard inbox/*.txt)
COUNTS := $(patsubst inbox/%.txt,count/%.txt,$(SRCS))

.PHONY: all
all: $(COUNTS)

upper/%.txt: inbox/%.txt | upper
\ttr a-z A-Z < $< > $@

count/%.txt: upper/%.txt | count
\twc -w < $< > $@

upper count:
\tmkdir -p $@

# keep the intermediate upper/ files, as eventrunner does
.SECONDARY:
"""


def eventrunner_cmd() -> list[str]:
    script = Path(sys.executable).parent / "eventrunner"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "eventrunner.cli.main"]


def timed(
    cmd: list[str], cwd: Path, ok: tuple[int, ...] = (0,)
) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if proc.returncode not in ok:
        sys.exit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-2000:]}"
        )
    return elapsed, proc


def text_for(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 4)):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
    return "\n".join(lines) + "\n"


def build(root: Path, n: int, seed: int, fanin: bool = False) -> tuple[Path, Path, list[str]]:
    """Equal make and eventrunner workspaces under root (with the fan-in stage if asked)."""
    rng = random.Random(seed)
    mk, er = root / "make", root / "er"
    for ws in (mk, er):
        (ws / "inbox").mkdir(parents=True)
    names = [f"e{i:06d}" for i in range(n)]
    for name in names:
        body = text_for(rng)
        for ws in (mk, er):
            (ws / "inbox" / f"{name}.txt").write_text(body)
    (mk / "Makefile").write_text(MAKEFILE + (FANIN_RULE if fanin else ""))
    (er / "pipelines").mkdir()
    (er / "pipelines" / "bench.toml").write_text(PIPELINE + (FANIN_STAGE if fanin else ""))
    (er / "handlers").mkdir()
    (er / "handlers" / "textops.py").write_text(HANDLERS)
    return mk, er, names


def compare(mk: Path, er: Path, names: list[str], sample: list[str]) -> None:
    for name in sample:
        for folder in ("upper", "count"):
            a = (mk / folder / f"{name}.txt").read_bytes()
            b = (er / folder / f"{name}.txt").read_bytes()
            if a != b:
                sys.exit(f"outputs differ: {folder}/{name}.txt make={a!r} eventrunner={b!r}")


def er_run(cmd: list[str], er: Path, jobs: int, expect_executed: int | None) -> float:
    elapsed, proc = timed([*cmd, "-w", str(er), "run", "--json", "-j", str(jobs)], er)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.exit(
            f"eventrunner run --json printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    if result.get("failed"):
        sys.exit(f"eventrunner run reported failures: {result}")
    if expect_executed is not None and result.get("executed") != expect_executed:
        sys.exit(
            f"eventrunner run executed {result.get('executed')}, expected {expect_executed}: {result}"
        )
    return elapsed


def make_run(mk: Path, jobs: int) -> float:
    return timed(["make", "-s", f"-j{jobs}"], mk)[0]


def make_q(mk: Path, expect_up_to_date: bool = True) -> float:
    elapsed, proc = timed(["make", "-q"], mk, ok=(0, 1))
    if (proc.returncode == 0) != expect_up_to_date:
        sys.exit(f"make -q returned {proc.returncode}, expected up to date = {expect_up_to_date}")
    return elapsed


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def one_change_at_scale(
    n: int, workdir: Path, reps: int, jobs: int, seed: int, fanin: bool = False
) -> None:
    """Rows "one changed input, N entities, whole process" (<= 0.3 s at 100,000) and "vs make -r
    -jJ" (<= 1x at 10,000): a different input edited before each pair of timed processes. The
    workspaces are built and brought up to date once under `workdir` and reused (100,000
    entities take minutes to build on 2 cores). `fanin`: with the fan-in stage (total.txt),
    whose one call reads every member in both tools."""
    cmd = eventrunner_cmd()
    root = workdir / f"one-change-{n}{'-fanin' if fanin else ''}"
    mk, er = root / "make", root / "er"
    execs = 2 + int(fanin)
    if not (root / ".ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        build(root, n, seed, fanin=fanin)
        er_run(cmd, er, jobs, 2 * n + int(fanin))
        make_run(mk, jobs)
        er_run(cmd, er, jobs, 0)
        (root / ".ready").touch()
        print(f"built and ran {n:,} entities once in {time.perf_counter() - t0:.0f} s at {root}")
    rng = random.Random(time.time_ns())
    er_s, mk_s, modes = [], [], []
    # The floors under a one-change run, first: an edit below sets a future mtime (for make),
    # which no stamp can vouch for until it has passed, so no-change runs after one look again.
    er_run(cmd, er, jobs, 0)  # a stamp for the previous invocation's last edit
    noop_s, mk_noop_s, imports_s = [], [], []
    for _ in range(reps):
        noop_s.append(er_run(cmd, er, jobs, 0))
        mk_noop_s.append(make_run(mk, jobs))
        imports_s.append(timed([sys.executable, "-c", "import eventrunner.cli.run"], er)[0])
    for i in range(reps):
        name = f"e{rng.randrange(n):06d}"
        # Four more words than now: its count changes, so the fan-in has to run (a new random
        # text could have as many words as the old, and the fan-in would rightly not run)
        body = (er / "inbox" / f"{name}.txt").read_text() + f"one change {i} {time.time_ns()}\n"
        for ws in (mk, er):
            path = ws / "inbox" / f"{name}.txt"
            path.write_text(body)
            future = time.time() + 1  # make compares mtimes: strictly newer than its outputs
            os.utime(path, (future, future))
        elapsed, proc = timed([*cmd, "-w", str(er), "run", "--json", "-j", str(jobs)], er)
        result = json.loads(proc.stdout)
        if result.get("executed") != execs or result.get("failed"):
            sys.exit(
                f"one-change run executed {result.get('executed')}, expected {execs}: {result}"
            )
        er_s.append(elapsed)
        modes.append(result.get("mode", "?"))
        mk_s.append(make_run(mk, jobs))
        compare(mk, er, [], [name])
        if fanin and (mk / "total.txt").read_text() != (er / "total.txt").read_text():
            sys.exit("total.txt differs between make and eventrunner")
    med = statistics.median
    target = 0.3 if n >= 100_000 else None
    shape = "x 2 stages + a fan-in" if fanin else "x 2 stages"
    print(f"one changed input, {n:,} entities {shape}, -j{jobs}, median of {reps}")
    print("| measurement | eventrunner | make -r | ratio er/make | target | |")
    print("|---|---|---|---|---|---|")
    ratio = med(er_s) / med(mk_s)
    print(
        f"| one changed input, {n:,}, whole process | {fmt_s(med(er_s))} | {fmt_s(med(mk_s))} "
        f"| {ratio:.2f} | {'<= 0.3 s' if target else '<= 1x make -r'} | "
        f"{'ok' if (med(er_s) <= target if target else ratio <= 1) else 'MISSED'} |"
    )
    # What a one-change run cannot go below: the stats of a no-change run (every recorded
    # path, to see what changed), and starting Python with what a run imports.
    print(
        f"| floor: the same, nothing changed (the look's stats) | {fmt_s(med(noop_s))} "
        f"| {fmt_s(med(mk_noop_s))} | {med(noop_s) / med(mk_noop_s):.2f} | (info) | |"
    )
    print(
        f"| floor: start-up and the run's imports | {fmt_s(med(imports_s))} | | "
        f"{med(imports_s) / med(mk_s):.2f} | (info) | |"
    )
    print(
        f"eventrunner {', '.join(f'{x * 1000:.0f}' for x in er_s)} ms ({', '.join(modes)}); "
        f"make -r {', '.join(f'{x * 1000:.0f}' for x in mk_s)} ms; imports: python -c "
        '"import eventrunner.cli.run", against make -r\'s one change'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000, help="inbox files (default 10000)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats for median rows (default 5)")
    parser.add_argument("--jobs", type=int, default=2, help="-j for both tools (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp workspace and print its path"
    )
    parser.add_argument(
        "--one-change-at",
        type=int,
        default=0,
        metavar="N",
        help="only the one-changed-input rows at N entities (workspace kept in --workdir)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="for --one-change-at")
    parser.add_argument(
        "--fanin", action="store_true", help="--one-change-at: with the fan-in stage (total.txt)"
    )
    parser.add_argument("--scaling", action="store_true", help="only the cold-run scaling rows")
    parser.add_argument(
        "--sizes", default="1000,10000", help="--scaling sizes (default 1000,10000)"
    )
    parser.add_argument("--full", action="store_true", help="--scaling: add 100000 (slow)")
    args = parser.parse_args()
    if args.scaling:
        sizes = [int(x) for x in args.sizes.split(",")] + ([100_000] if args.full else [])
        cold_scaling(sizes, args.jobs, args.seed, args.repeat, args.keep)
        return
    if shutil.which("make") is None:
        sys.exit("GNU make not found on PATH")
    if args.one_change_at:
        workdir = args.workdir or Path(tempfile.gettempdir()) / "er-bench-one-change"
        one_change_at_scale(
            args.one_change_at, workdir, args.repeat, args.jobs, args.seed, args.fanin
        )
        return
    n, reps, jobs = args.entities, args.repeat, args.jobs
    cmd = eventrunner_cmd()
    root = Path(tempfile.mkdtemp(prefix="er-bench-"))
    rng = random.Random(args.seed + 1)
    try:
        t0 = time.perf_counter()
        mk, er, names = build(root, n, args.seed)
        print(
            f"{n} entities x 2 stages, -j{jobs}, median of {reps}, {os.cpu_count()} CPUs, "
            f"workspace built in {time.perf_counter() - t0:.1f} s at {root}"
        )
        sample = sorted(set(rng.sample(names, min(200, n))) | {names[0], names[-1]})

        # 1. cold
        probe = fsprobe.create_us(root)
        er_cold = er_run(cmd, er, jobs, 2 * n)
        mk_cold = make_run(mk, jobs)
        compare(mk, er, names, sample)
        index = er / ".eventrunner" / "index.sqlite"
        had_index = index.exists()

        # 2. no change
        er_noop, mk_q, mk_noop = [], [], []
        for _ in range(reps):
            er_noop.append(er_run(cmd, er, jobs, 0))
            mk_q.append(make_q(mk))
            mk_noop.append(make_run(mk, jobs))

        # 3. one input changed, a different file each time
        er_one, mk_one = [], []
        changed = rng.sample(names, min(reps, n))
        for i, name in enumerate(changed):
            body = text_for(rng) + f"changed {i} again\n"
            for ws in (mk, er):
                path = ws / "inbox" / f"{name}.txt"
                path.write_text(body)
                # make compares mtimes: make sure the edit is strictly newer than its outputs
                future = time.time() + 1
                os.utime(path, (future, future))
            er_one.append(er_run(cmd, er, jobs, 2))
            make_q(mk, expect_up_to_date=False)  # sanity: make sees the change too (untimed)
            mk_one.append(make_run(mk, jobs))
        compare(mk, er, names, sorted(set(sample) | set(changed)))

        # 4. no change with a cold index (rebuilt from manifests)
        er_cold_index = []
        for _ in range(reps):
            for suffix in ("", "-wal", "-shm"):  # SQLite's files beside it go with it
                index.with_name(index.name + suffix).unlink(missing_ok=True)
            er_cold_index.append(er_run(cmd, er, jobs, 0))
        # and once more warm, to be sure the rebuilt index was saved and is used
        er_after = er_run(cmd, er, jobs, 0)

        # 5. the same with a fan-in stage: cold, then one input changed (3 executions each)
        fmk, fer, _ = build(root / "fanin", n, args.seed, fanin=True)
        er_fcold = er_run(cmd, fer, jobs, 2 * n + 1)
        mk_fcold = make_run(fmk, jobs)
        if (fmk / "total.txt").read_bytes() != (fer / "total.txt").read_bytes():
            sys.exit("total.txt differs between make and eventrunner")
        er_fone, mk_fone = [], []
        for i, name in enumerate(rng.sample(names, min(reps, n))):
            # Appended to, so its word count (count's output) changes and the total must run:
            # a new random text could have the old count, and early cutoff would skip the total.
            body = (fer / "inbox" / f"{name}.txt").read_text() + f"changed {i} with more words\n"
            for ws in (fmk, fer):
                path = ws / "inbox" / f"{name}.txt"
                path.write_text(body)
                future = time.time() + 1
                os.utime(path, (future, future))
            er_fone.append(er_run(cmd, fer, jobs, 3))
            mk_fone.append(make_run(fmk, jobs))
        if (fmk / "total.txt").read_bytes() != (fer / "total.txt").read_bytes():
            sys.exit("total.txt differs between make and eventrunner after the edits")
        fanin_cost = (er_fcold / (2 * n + 1)) / (er_cold / (2 * n))

        med = statistics.median
        rows = [
            (
                "1. cold run, executions/s",
                f"{2 * n / er_cold:,.0f}/s",
                f"{2 * n / mk_cold:,.0f}/s",
                f"{(2 * n / er_cold) / (2 * n / mk_cold):.2f}",
                ">= 2,000/s",
                "ok" if 2 * n / er_cold >= 2000 else "MISSED",
            ),
            (
                "   cold run, wall",
                fmt_s(er_cold),
                fmt_s(mk_cold),
                f"{er_cold / mk_cold:.2f}",
                "",
                "",
            ),
            (
                "2. no change vs make -q",
                fmt_s(med(er_noop)),
                fmt_s(med(mk_q)),
                f"{med(er_noop) / med(mk_q):.2f}",
                "< 1 s, <= make",
                "ok" if med(er_noop) < 1 and med(er_noop) <= med(mk_q) else "MISSED",
            ),
            (
                f"   no change vs make -j{jobs}",
                fmt_s(med(er_noop)),
                fmt_s(med(mk_noop)),
                f"{med(er_noop) / med(mk_noop):.2f}",
                "< 1 s, <= make",
                "ok" if med(er_noop) < 1 and med(er_noop) <= med(mk_noop) else "MISSED",
            ),
            (
                "3. one input changed",
                fmt_s(med(er_one)),
                fmt_s(med(mk_one)),
                f"{med(er_one) / med(mk_one):.2f}",
                "< 1 s",
                "ok" if med(er_one) < 1 else "MISSED",
            ),
            (
                "4. no change, index deleted",
                fmt_s(med(er_cold_index)),
                fmt_s(med(mk_q)),
                f"{med(er_cold_index) / med(mk_q):.2f}",
                "(info)",
                "",
            ),
            (
                "5. cold run with a fan-in, wall",
                fmt_s(er_fcold),
                fmt_s(mk_fcold),
                f"{er_fcold / mk_fcold:.2f}",
                "",
                "",
            ),
            (
                "   per execution vs without fan-in",
                f"{fanin_cost:.2f}x",
                "",
                "",
                "<= 1.3x",
                "ok" if fanin_cost <= 1.3 else "MISSED",
            ),
            (
                "   one input changed, with fan-in",
                fmt_s(med(er_fone)),
                fmt_s(med(mk_fone)),
                f"{med(er_fone) / med(mk_fone):.2f}",
                "<= make",
                "ok" if med(er_fone) <= med(mk_fone) else "MISSED",
            ),
        ]
        head = ("measurement", "eventrunner", "make", "ratio er/make", "target", "")
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

        def line(r: tuple[str, ...]) -> str:
            return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

        def spread(xs: list[float]) -> str:
            return f"{min(xs) * 1000:.0f}-{max(xs) * 1000:.0f} ms"

        print(line(head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in rows:
            print(line(r))
        print(
            f"ranges: no-change {spread(er_noop)} (make -q {spread(mk_q)}, make -j{jobs} {spread(mk_noop)}); "
            f"one changed {spread(er_one)} (make {spread(mk_one)}); index deleted {spread(er_cold_index)}; "
            f"warm again {er_after * 1000:.0f} ms"
        )
        print(
            f"outputs identical on {len(sample) + len(changed)} sampled entities (upper and count); "
            f"index cache present after cold run: {had_index}"
        )
        print(
            f"one file creation cost {fsprobe.fmt_us(probe)} of CPU before the cold runs "
            "(fsprobe.py: right after a mass delete this machine's ext4 takes ~50x longer)"
        )
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def cold_timed(cmd: list[str], er: Path, jobs: int, executed: int) -> tuple[float, float]:
    """A cold `eventrunner run`: (wall seconds, CPU seconds of the child, user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = er_run(cmd, er, jobs, executed)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_scaling(sizes: list[int], jobs: int, seed: int, repeat: int, keep: bool) -> None:
    """Issue 15's cold-run rows: executions/s at 10k x 2 stages (target >= 2,000/s), and
    map -> map -> fan-in against the same without the fan-in (target <= 1.3x per execution,
    per-entity cost flat from 1k to 100k). Each run is cold (a fresh copy of the inbox);
    the median of min(repeat, 3) runs per size (1 at 100k)."""
    cmd = eventrunner_cmd()
    root = Path(tempfile.mkdtemp(prefix="er-scale-"))
    rows: list[tuple[str, ...]] = []
    per_entity: dict[int, float] = {}
    probes: list[float] = []  # fsprobe.create_us before each cold run
    try:
        for n in sizes:
            reps = 1 if n >= 100_000 else max(1, min(repeat, 3))
            got: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for rep in range(reps):
                for fanin in (False, True):  # alternated, so both see the same machine load
                    # Kept until the end: a delete slows the next run's creations (fsprobe.py).
                    base = root / f"{n}-{int(fanin)}-{rep}"
                    _, er, _ = build(base, n, seed, fanin=fanin)
                    probes.append(fsprobe.create_us(root))
                    got[fanin].append(cold_timed(cmd, er, jobs, 2 * n + int(fanin)))
            med = statistics.median
            for fanin in (False, True):
                wall = med(w for w, _ in got[fanin])
                cpu = med(c for _, c in got[fanin])
                execs = 2 * n + int(fanin)
                if fanin:
                    per_entity[n] = wall / n
                rows.append(
                    (
                        f"{n:,}",
                        "map -> map -> fan-in" if fanin else "map -> map",
                        fmt_s(wall),
                        f"{execs / wall:,.0f}/s",
                        f"{cpu / execs * 1e6:,.0f} us",
                        f"{wall / n * 1e6:,.0f} us",
                        ">= 2,000/s" if n == 10_000 and not fanin else "",
                    )
                )
            ratio = med(w for w, _ in got[True]) / med(w for w, _ in got[False])
            cpu_ratio = med(c for _, c in got[True]) / med(c for _, c in got[False])
            rows.append(
                (
                    f"{n:,}",
                    "  fan-in / without",
                    f"{ratio:.2f}x",
                    "",
                    f"{cpu_ratio:.2f}x",
                    "",
                    "<= 1.3x" + (" ok" if ratio <= 1.3 else " MISSED"),
                )
            )
    finally:
        if keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    head = ("entities", "pipeline", "cold wall", "executions/s", "CPU/execution")
    head += ("wall/entity", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(
        f"cold runs, -j{jobs}, {os.cpu_count()} CPUs (median of up to 3, alternated); one file "
        f"creation cost {fsprobe.fmt_us(min(probes))} to {fsprobe.fmt_us(max(probes))} of CPU "
        "before them (fsprobe.py)"
    )
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    if len(per_entity) >= 2:
        small, big = min(per_entity), max(per_entity)
        growth = per_entity[big] / per_entity[small]
        print(
            f"fan-in pipeline wall per entity, {big:,} vs {small:,}: {growth:.2f}x (target: flat)"
        )


if __name__ == "__main__":
    main()
