"""The Dask executor on a real cluster: a `dask scheduler` and two `dask worker` processes
started by this module (one offering the resource GPU=1), killed at its end, with a check
that no process started here is left. Handlers block, get SIGKILLed, outlive their timeout
and are edited mid-run; outputs and manifests are compared with the thread executor's."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from call_helpers import stage_call
from conftest import MakeWorkspace, Workspace
from dask_helpers import MARK, Cluster, cluster, free_port, marked_processes

from eventrunner.core.errors import HandlerTimeout
from eventrunner.run.engine import Engine
from eventrunner.run.report import RunReport
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = secrets.token_hex(4)
DEADLINE = 30.0


# -- the cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_process_left() -> Iterator[None]:
    """After the module: no scheduler, worker or CLI-started cluster process remains."""
    yield
    deadline = time.monotonic() + 15
    while (left := marked_processes(TOKEN)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes left behind: {left}"


@pytest.fixture(scope="module")
def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory, no_process_left: None
) -> Iterator[Cluster]:
    pytest.importorskip("distributed", reason="needs distributed: pip install 'eventrunner[dask]'")
    workers = {"gpu": ("--resources", "GPU=1"), "cpu": ()}
    with cluster(tmp_path_factory.mktemp("dask"), TOKEN, workers) as c:
        yield c


@pytest.fixture
def dask(shared_cluster: Cluster) -> Cluster:
    """The module's cluster with both workers up (a killed one is restarted by its nanny)."""
    shared_cluster.wait_for_workers(2)
    return shared_cluster


def dask_toml(address: str, retry: str = 'backoff = "1d", max_backoff = "1d"') -> str:
    return f'[runtime]\nexecutor = "dask"\ndask_scheduler = "{address}"\nretry = {{ {retry} }}\n'


async def drain(root: Path) -> RunReport:
    """What `eventrunner run` does, on this loop: every stale state, once."""
    engine, index = make_engine(root)
    outcome = await engine.drain()
    index.save()
    return outcome


async def until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def manifests(root: Path) -> dict[str, dict[str, Any]]:
    """Every manifest, without its timings."""
    out = {}
    for path in sorted((root / ".eventrunner" / "state").glob("*/*.json")):
        data = json.loads(path.read_bytes())
        for timing in ("started", "finished_ns", "duration_s"):
            data.pop(timing)
        out[path.relative_to(root).as_posix()] = data
    return out


def failures(root: Path) -> dict[str, tuple[Any, ...]]:
    out = {}
    for path in sorted((root / ".eventrunner" / "failures").glob("*/*.json")):
        data = json.loads(path.read_bytes())
        out[path.name] = (data["stage"], data["entity"], data["error"], data["attempts"])
    return out


def tree(root: Path) -> dict[str, bytes | None]:
    """Every data file's bytes (None for a folder), state and settings left out."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith((".eventrunner", "eventrunner.toml")) or "__pycache__" in rel:
            continue
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


# -- same results as the thread executor ---------------------------------------------------------
@pytest.mark.parametrize(
    "example",
    [
        "echo",  # map, chain, fan-in
        "news",  # fan-out (the stock feeds handler), map over two inputs, fan-in
        pytest.param(
            "auto-blog",  # stock markdown and shell handlers, a timeout, fan-in
            marks=pytest.mark.skipif(
                shutil.which("espeak-ng") is None, reason="the audio stage needs espeak-ng"
            ),
        ),
    ],
)
def test_outputs_and_manifests_are_those_of_the_thread_executor(
    example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], dask: Cluster
) -> None:
    # Given two copies of an example, one set to run on the Dask cluster
    ignore = shutil.ignore_patterns(".eventrunner", "__pycache__")
    shutil.copytree(EXAMPLES / example, tmp_path / "thread", ignore=ignore)
    shutil.copytree(EXAMPLES / example, tmp_path / "dask", ignore=ignore)
    local, remote = Workspace(tmp_path / "thread", capsys), Workspace(tmp_path / "dask", capsys)
    remote.write("eventrunner.toml", dask_toml(dask.address))
    # When each runs
    a, b = local.cli("run", "--json"), remote.cli("run", "--json")
    # Then they report the same counts and failures ...
    assert (a.code, b.code) == (b.code, a.code), (a.err, b.err)
    counts = ("executed", "succeeded", "failed", "skipped")
    assert [a.json[k] for k in counts] == [b.json[k] for k in counts], b.err
    assert a.json["succeeded"] > 0
    assert failures(local.root) == failures(remote.root)
    # ... and left the same outputs, byte for byte, and the same manifests
    assert tree(local.root) == tree(remote.root)
    assert manifests(local.root) == manifests(remote.root)
    assert len(manifests(remote.root)) == a.json["succeeded"]


FORMS_HANDLERS = """\
import hashlib
import os
from pathlib import Path


def folder(ctx, t: str) -> None:
    out = ctx.output_path
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text(t)
    (out / "sub" / "b.txt").write_text(t * 2)
    (out / "empty").mkdir()
    os.symlink("a.txt", out / "link")


def script(ctx, t: str) -> None:
    ctx.output_path.write_text("#!/bin/sh\\necho " + t)
    ctx.output_path.chmod(0o750)


def summary(ctx, d: Path, big: bytes) -> str:
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    again = ctx.final_path.read_text() if ctx.final_path.exists() else ""
    return f"{files} {len(big)} {hashlib.sha256(big).hexdigest()} previous={len(again)}\\n"
"""

FORMS_PIPELINE = """\
[stages.folder]
handler = "h:folder"
inputs = { t = "in/{n}.txt" }
output = "dirs/{n}"

[stages.script]
handler = "h:script"
inputs = { t = "in/{n}.txt" }
output = "bin/{n}.sh"

[stages.summary]
handler = "h:summary"
inputs = { d = "dirs/{n}", big = "big/{n}.bin" }
output = "sum/{n}.txt"
"""


def modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.lstat().st_mode
        for p in sorted(root.rglob("*"))
        if not p.relative_to(root).as_posix().startswith((".eventrunner", "eventrunner.toml"))
        and "__pycache__" not in p.parts
    }


@pytest.mark.parametrize("shared_fs", [False, True])
def test_folders_large_files_links_and_modes_travel_as_with_the_thread_executor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dask: Cluster, shared_fs: bool
) -> None:
    from eventrunner.run.dask_wire import INLINE_LIMIT

    # Given folder outputs (with a link and an empty folder), an executable output, and
    # inputs that are a folder and a file over the inline limit
    big = secrets.token_bytes(INLINE_LIMIT + 1000)
    roots = []
    for name in ("thread", "dask"):
        root = tmp_path / name
        for rel, content in {
            "pipelines/p.toml": FORMS_PIPELINE,
            "handlers/h.py": FORMS_HANDLERS,
            "in/a.txt": "a",
            "in/b.txt": "b",
        }.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)
        (root / "big").mkdir()
        (root / "big/a.bin").write_bytes(big)
        (root / "big/b.bin").write_bytes(big[::-1])
        roots.append(root)
    local, remote = (Workspace(r, capsys) for r in roots)
    remote.write(
        "eventrunner.toml", dask_toml(dask.address) + f"shared_fs = {str(shared_fs).lower()}\n"
    )
    # When each runs twice (the second time after the summaries' inputs changed)
    for _ in range(2):
        a, b = local.cli("run", "--json"), remote.cli("run", "--json")
        assert (a.code, b.code) == (0, 0), (a.err, b.err)
        for ws in (local, remote):
            ws.write("in/a.txt", ws.read("in/a.txt") + "+")
    # Then outputs, permission bits, links and manifests are the same
    assert tree(local.root) == tree(remote.root)
    assert modes(local.root) == modes(remote.root)
    assert manifests(local.root) == manifests(remote.root)
    assert "previous=" in remote.read("sum/a.txt") and "previous=0" not in remote.read("sum/a.txt")
    assert os.readlink(remote.root / "dirs/a/link") == "a.txt"


# -- failures ------------------------------------------------------------------------------------
BLOCKING = """\
import os
import time
from pathlib import Path


def work(ctx, t: str) -> str:
    folder = Path(ctx.params["pids"])
    folder.mkdir(exist_ok=True)
    # Written whole, then renamed: a test that sees the file reads the pid, never ""
    part = folder / f"{ctx.entity_id}-{ctx.attempt}.part"
    part.write_text(str(os.getpid()))
    os.replace(part, folder / f"{ctx.entity_id}-{ctx.attempt}")
    if ctx.attempt == 1 and ctx.params.get("block_first"):
        deadline = time.monotonic() + 20
        while not Path(ctx.params["release"]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (folder / f"{ctx.entity_id}-{ctx.attempt}.returned").write_text("")
    return ctx.params["label"] + t.upper()
"""


def blocking_workspace(
    make_workspace: MakeWorkspace,
    toml: str,
    tmp_path: Path,
    stage_extra: str = "",
    block: bool = True,
) -> Workspace:
    """Stage p.s over in/{n}.txt; its first attempt blocks until tmp_path/release exists."""
    params = (
        f'pids = "{tmp_path / "pids"}", release = "{tmp_path / "release"}", '
        f'block_first = {str(block).lower()}, label = "v1:"'
    )
    pipeline = f"""\
[stages.s]
handler = "h:work"
inputs = {{ t = "in/{{n}}.txt" }}
output = "out/{{n}}.txt"
params = {{ {params} }}
{stage_extra}"""
    return make_workspace(
        {
            "eventrunner.toml": toml,
            "pipelines/p.toml": pipeline,
            "handlers/h.py": BLOCKING,
            "in/a.txt": "a",
        }
    )


async def test_a_worker_killed_mid_call_costs_one_attempt_and_the_retry_runs_elsewhere(
    make_workspace: MakeWorkspace, dask: Cluster, tmp_path: Path
) -> None:
    # Given a handler whose first attempt blocks, on a cluster of two worker processes
    toml = dask_toml(dask.address, 'max_attempts = 3, backoff = "0s", max_backoff = "0s"')
    ws = blocking_workspace(make_workspace, toml, tmp_path)
    run = asyncio.ensure_future(drain(ws.root))
    # When the worker process running it is killed with SIGKILL
    pidfile = await until(
        lambda: (tmp_path / "pids/a-1").exists() and tmp_path / "pids/a-1", "a start"
    )
    victim = int(pidfile.read_text())
    os.kill(victim, signal.SIGKILL)
    first = await run
    # Then that attempt failed, with the lost worker as the reason, and nothing was written
    assert (first.failed, first.succeeded) == (1, 0)
    assert first.failures[0]["error"].startswith("WorkerLost: the Dask worker tcp://127.0.0.1:")
    assert first.failures[0]["error"].endswith("running the handler died")
    assert not ws.exists("out/a.txt")
    # And the retry ran in another worker process and was committed as the second attempt
    second = await drain(ws.root)
    assert (second.failed, second.succeeded) == (0, 1)
    assert int((tmp_path / "pids/a-2").read_text()) != victim
    assert ws.read("out/a.txt") == "v1:A"
    assert manifests(ws.root)[".eventrunner/state/p.s/a.json"]["attempt"] == 2


async def test_a_code_edit_during_a_run_is_never_recorded_under_the_wrong_identity(
    make_workspace: MakeWorkspace, dask: Cluster, tmp_path: Path
) -> None:
    # Given a run whose workspace was loaded with the handler's code v1
    ws = blocking_workspace(make_workspace, dask_toml(dask.address), tmp_path, block=False)
    ws.write("in/b.txt", "b")
    loaded = load_workspace(ws.root)
    v1 = loaded.code["p.s"]
    store = Store(loaded.settings.state_dir)
    index = Index.load(loaded, store)
    engine = Engine(index, store, jobs=2)
    engine.consider(engine.planner.all_targets(), fresh_pass=True)
    # When the handler is edited before its code is sent to the workers
    edited = BLOCKING.replace('ctx.params["label"] + t.upper()', '"v2:" + t.upper()')
    ws.write("handlers/h.py", edited)
    outcome = await engine.drain()
    index.save()
    # Then the workers refused to run code the coordinator would record as v1: no output
    assert outcome.succeeded == 0 and outcome.failed == 2
    assert all(f["error"].startswith("CodeChanged: handler h:work") for f in outcome.failures)
    assert not ws.exists("out/a.txt") and not ws.exists("out/b.txt")
    # And the next run records v2's outputs under v2's identity
    v2 = load_workspace(ws.root).code["p.s"]
    assert v2 != v1
    again = await drain(ws.root)
    assert again.succeeded == 2
    assert (ws.read("out/a.txt"), ws.read("out/b.txt")) == ("v2:A", "v2:B")
    assert {m["code"] for m in manifests(ws.root).values()} == {v2}


async def test_a_timeout_is_enforced_by_the_coordinator_and_the_late_result_ignored(
    make_workspace: MakeWorkspace, dask: Cluster, tmp_path: Path
) -> None:
    from eventrunner.run.dask_pool import DaskExecutor

    # Given a handler that blocks past its stage's 1 s timeout
    ws = blocking_workspace(make_workspace, dask_toml(dask.address), tmp_path, 'timeout = "1s"')
    pool = DaskExecutor(scheduler=dask.address, workers=1, shared_fs=False)
    await pool.start()
    try:
        # When it runs on the cluster
        t0 = time.monotonic()
        with pytest.raises(HandlerTimeout, match=r"timed out after 1\.0s"):
            await pool.submit(stage_call(ws.root, "p.s", "a", checked=True))
        # Then it failed once its time on the worker was up, though the handler still runs
        assert time.monotonic() - t0 >= 1.0
        assert not (tmp_path / "pids/a-1.returned").exists()
        # And when the handler returns at last, its result is thrown away
        (tmp_path / "release").write_text("")
        await until(lambda: (tmp_path / "pids/a-1.returned").exists(), "the handler to return")
        await until(lambda: not pool._inflight, "the task to be dropped")
        assert not ws.exists("out/a.txt")
        assert list(ws.root.rglob(".er-tmp-*")) == []
    finally:
        (tmp_path / "release").write_text("")
        await pool.close()


async def test_a_lost_scheduler_connection_resubmits_instead_of_counting_a_failure(
    make_workspace: MakeWorkspace, tmp_path: Path, no_process_left: None
) -> None:
    pytest.importorskip("distributed", reason="needs distributed: pip install 'eventrunner[dask]'")
    with cluster(tmp_path / "cluster", TOKEN, {"w1": ()}) as c:
        # Given a call running on the only worker of a scheduler
        ws = blocking_workspace(make_workspace, dask_toml(c.address), tmp_path)
        engine, index = make_engine(ws.root)
        run = asyncio.ensure_future(engine.drain())
        await until(lambda: (tmp_path / "pids/a-1").exists(), "the call to start")
        first_pid = int((tmp_path / "pids/a-1").read_text())
        # When the scheduler dies (its worker leaves with it) and another comes up in its place
        c.kill_scheduler()
        (tmp_path / "release").write_text("")  # the call, sent again, need not block
        c.start_scheduler()
        c.start_worker("w2")
        outcome = await run
        index.save()
        # Then the call was sent again and committed as its first attempt: nothing failed
        assert (outcome.failed, outcome.succeeded) == (0, 1), outcome.failures
        assert engine.executor.resubmitted == 1  # type: ignore[attr-defined]
        assert int((tmp_path / "pids/a-1").read_text()) != first_pid
        assert ws.read("out/a.txt") == "v1:A"
        assert manifests(ws.root)[".eventrunner/state/p.s/a.json"]["attempt"] == 1
        assert failures(ws.root) == {}


async def test_shutdown_drops_calls_not_started_and_lets_running_ones_finish(
    make_workspace: MakeWorkspace, dask: Cluster, tmp_path: Path
) -> None:
    from eventrunner.run.dask_pool import DaskExecutor

    # Given four calls on two worker threads: two running (blocked), two sent but waiting
    ws = blocking_workspace(make_workspace, dask_toml(dask.address), tmp_path)
    for n in "bcd":
        ws.write(f"in/{n}.txt", n)
    pool = DaskExecutor(scheduler=dask.address, workers=1, shared_fs=False)
    engine, index = make_engine(ws.root, executor=pool)
    try:
        await engine.start()
        await until(
            lambda: (
                sum(b.started for b in pool._inflight.values()) == 2
                and sum(b.dask is not None for b in pool._inflight.values()) == 4
            ),
            "two calls running and two waiting on the workers",
        )
        waiting = {b.key for b in pool._inflight.values() if not b.started}
        running = {b.jobs[0].call.entity for b in pool._inflight.values() if b.started}
        # When shutdown begins
        stopping = asyncio.ensure_future(engine.stop(grace=30))

        async def dropped() -> bool:
            """True once no worker holds any of the waiting calls' tasks any more."""
            held = await pool.link.client.run(lambda dask_worker: list(dask_worker.state.tasks))
            return not waiting & {k for keys in held.values() for k in keys}

        deadline = time.monotonic() + DEADLINE
        while not await dropped():  # the workers forgot the waiting calls
            assert time.monotonic() < deadline, "waiting calls still on the workers"
            await asyncio.sleep(0.02)
        (tmp_path / "release").write_text("")
        await stopping
        # Then the running calls finished within the grace period and were committed ...
        assert engine.outcome.succeeded == 2
        assert {p.stem for p in (ws.root / "out").iterdir()} == running
        # ... the waiting ones never started, and the stop is not clean: they stay stale
        assert {p.name.split("-")[0] for p in (tmp_path / "pids").glob("?-1")} == running
        assert engine.stopped_clean is False
        assert index.running == set()
    finally:
        (tmp_path / "release").write_text("")
        await pool.close()


def make_engine(root: Path, **kwargs: Any) -> tuple[Engine, Index]:
    """An engine over a freshly loaded workspace, every stale state queued."""
    ws = load_workspace(root)
    store = Store(ws.settings.state_dir)
    index = Index.load(ws, store)
    engine = Engine(index, store, jobs=2, **kwargs)
    engine.consider(engine.planner.all_targets(), fresh_pass=True)
    return engine, index


# -- what Dask adds ------------------------------------------------------------------------------
WHERE = """\
import asyncio
import threading


def where(t: str) -> str:
    from distributed import get_worker

    return f"{get_worker().name}:{t}"


async def looped(t: str) -> str:
    from distributed import get_worker

    await asyncio.sleep(0.01)
    own_loop = asyncio.get_running_loop() is not get_worker().loop.asyncio_loop
    main = threading.current_thread() is threading.main_thread()
    return f"own loop {own_loop}, main thread {main}: {t}"


def plain(t: str) -> str:
    return t + "!"
"""


def where_workspace(make_workspace: MakeWorkspace, toml: str, stages: str, n: int) -> Workspace:
    files: dict[str, str | bytes] = {"eventrunner.toml": toml, "handlers/h.py": WHERE}
    files["pipelines/p.toml"] = stages
    files.update({f"in/{i}.txt": str(i) for i in range(n)})
    return make_workspace(files)


async def test_stage_resources_are_dask_worker_resources(
    make_workspace: MakeWorkspace, dask: Cluster
) -> None:
    # Given a stage that needs one GPU, and one of the two workers offering one
    stages = """\
[stages.gpu]
handler = "h:where"
inputs = { t = "in/{n}.txt" }
output = "gpu/{n}.txt"
resources = { GPU = 1 }
"""
    ws = where_workspace(make_workspace, dask_toml(dask.address), stages, 6)
    # When it runs
    outcome = await drain(ws.root)
    # Then every call ran on the worker with the GPU
    assert outcome.succeeded == 6
    assert {ws.read(f"gpu/{i}.txt") for i in range(6)} == {f"gpu:{i}" for i in range(6)}


async def test_async_handlers_run_in_a_loop_of_their_own_on_the_worker(
    make_workspace: MakeWorkspace, dask: Cluster
) -> None:
    # Given an async handler
    stages = (
        '[stages.a]\nhandler = "h:looped"\ninputs = { t = "in/{n}.txt" }\noutput = "a/{n}.txt"\n'
    )
    ws = where_workspace(make_workspace, dask_toml(dask.address), stages, 2)
    # When it runs on Dask
    outcome = await drain(ws.root)
    # Then it ran on a worker thread in its own event loop, not on the worker's loop
    assert outcome.succeeded == 2
    assert ws.read("a/1.txt") == "own loop True, main thread False: 1"


async def test_many_small_calls_share_tasks_and_futures_in_flight_stay_bounded(
    make_workspace: MakeWorkspace, dask: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventrunner.run import dask_batch
    from eventrunner.run.dask_pool import PER_THREAD, DaskExecutor

    # Given 300 calls of a trivial handler, every call counted as small and worth batches of
    # BATCH_MAX (on a busy machine a trivial call may measure slow: this is about the grouping;
    # test_batch_size_follows_the_measured_call_time covers the measuring)
    monkeypatch.setattr(dask_batch, "SMALL_S", 1.0)
    monkeypatch.setattr(dask_batch, "BATCH_S", 100.0)
    stages = (
        '[stages.p]\nhandler = "h:plain"\ninputs = { t = "in/{n}.txt" }\noutput = "p/{n}.txt"\n'
    )
    ws = where_workspace(make_workspace, dask_toml(dask.address), stages, 300)
    pool = DaskExecutor(scheduler=dask.address, workers=1, shared_fs=False)
    most: list[int] = []
    real_pump = pool._pump

    def pump() -> None:
        real_pump()
        most.append(len(pool._inflight))

    pool._pump = pump  # type: ignore[method-assign]
    engine, _ = make_engine(ws.root, executor=pool)
    try:
        # When they run
        outcome = await engine.drain()
    finally:
        await pool.close()
    # Then all succeeded, in far fewer Dask tasks than calls ...
    assert outcome.succeeded == 300
    assert [ws.read(f"p/{i}.txt") for i in range(0, 300, 37)] == [
        f"{i}!" for i in range(0, 300, 37)
    ]
    assert pool.batches <= 300 / 4, pool.batches
    # ... and never more futures in flight than two per worker thread
    assert max(most) <= PER_THREAD * 2


def test_batch_size_follows_the_measured_call_time() -> None:
    from eventrunner.run.dask_batch import BATCH_MAX, Pace

    # Given stages timed on the workers
    quick, slow, new = Pace(), Pace(), Pace()
    for _ in range(3):
        quick.add(0.001)
    # Then a stage is batched only once measured (4 calls) and small, into ~50 ms tasks
    assert quick.batch() == 1
    quick.add(0.001)
    assert quick.batch() == 50
    for _ in range(10):
        slow.add(0.05)
    assert (slow.batch(), new.batch()) == (1, 1)
    for _ in range(10):
        new.add(0.00001)
    assert new.batch() == BATCH_MAX


# -- configuration and errors --------------------------------------------------------------------
def test_dask_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    from eventrunner.workspace.settings import load_settings

    env = {
        "EVENTRUNNER_RUNTIME_EXECUTOR": "dask",
        "EVENTRUNNER_RUNTIME_DASK_SCHEDULER": "tcp://scheduler:8786",
        "EVENTRUNNER_RUNTIME_DASK_WORKERS": "3",
        "EVENTRUNNER_RUNTIME_SHARED_FS": "true",
    }
    rt = load_settings(tmp_path, env=env).runtime
    assert (rt.executor, rt.dask_scheduler, rt.dask_workers, rt.shared_fs) == (
        "dask",
        "tcp://scheduler:8786",
        3,
        True,
    )
    default = load_settings(tmp_path, env={}).runtime
    assert (default.dask_scheduler, default.dask_workers, default.shared_fs) == (
        None,
        os.cpu_count() or 1,
        False,
    )


def test_a_resource_amount_must_be_positive(make_workspace: MakeWorkspace) -> None:
    stages = """\
[stages.gpu]
handler = "h:where"
inputs = { t = "in/{n}.txt" }
output = "gpu/{n}.txt"
resources = { GPU = 0 }
"""
    ws = where_workspace(make_workspace, "", stages, 1)
    res = ws.cli("validate")
    assert res.code == 2
    assert "pipelines/p.toml: stages.gpu.resources.GPU: Input should be greater than 0" in res.err


DASK_RUN = '[runtime]\nexecutor = "dask"\n'


def test_without_distributed_a_dask_run_is_a_one_line_error_with_exit_2(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace set to run on Dask, in a CLI process that cannot import distributed
    # (a None entry in sys.modules is how Python reports a module as not installed)
    ws = where_workspace(
        make_workspace,
        DASK_RUN,
        '[stages.p]\nhandler = "h:plain"\ninputs = { t = "in/{n}.txt" }\noutput = "p/{n}.txt"\n',
        1,
    )
    code = (
        "import sys; sys.modules['distributed'] = None; "
        "from eventrunner.cli.main import console; "
        "sys.argv = ['eventrunner', '-w', sys.argv[1], 'run']; console()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ws.root)], capture_output=True, text=True, timeout=60
    )
    # Then it exits 2 with one line naming the setting and the fix
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        'eventrunner: [runtime] executor = "dask" needs the distributed package: '
        "pip install 'eventrunner[dask]'"
    ]
    assert not ws.exists("p/0.txt")


PLAIN_STAGE = (
    '[stages.p]\nhandler = "h:plain"\ninputs = { t = "in/{n}.txt" }\noutput = "p/{n}.txt"\n'
)


@pytest.mark.parametrize("command", ["run", "serve"])
def test_an_unreachable_scheduler_is_a_one_line_error_with_exit_2(
    make_workspace: MakeWorkspace, command: str
) -> None:
    pytest.importorskip("distributed", reason="needs distributed: pip install 'eventrunner[dask]'")
    # Given a scheduler address (from the environment) where nothing listens
    ws = where_workspace(make_workspace, "", PLAIN_STAGE, 1)
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {
        "EVENTRUNNER_RUNTIME_EXECUTOR": "dask",
        "EVENTRUNNER_RUNTIME_DASK_SCHEDULER": address,
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s",  # Dask's own connect timeout
    }
    # When `run` or `serve` starts
    args = ("run",) if command == "run" else ("serve", "--port", "0", "--no-watch")
    res = ws.sub(*args, env=env)
    # Then it exits 2, its last line naming the setting (and `run` prints nothing else)
    assert res.code == 2, res.err
    error = res.err.splitlines()[-1]
    assert error.startswith(f"eventrunner: [runtime] dask_scheduler = '{address}': cannot reach")
    if command == "run":
        assert res.err.splitlines() == [error]
    assert not ws.exists("p/0.txt")


def test_without_a_scheduler_run_starts_and_stops_a_local_cluster(
    make_workspace: MakeWorkspace,
) -> None:
    pytest.importorskip("distributed", reason="needs distributed: pip install 'eventrunner[dask]'")
    # Given a workspace on Dask with no scheduler address: a local cluster of one worker
    ws = where_workspace(make_workspace, DASK_RUN + "dask_workers = 1\n", WHERE_STAGE, 3)
    token = secrets.token_hex(4)
    # When `run` runs
    res = ws.sub("run", "--json", env={MARK: token})
    # Then the handlers ran in a worker process of the local cluster ...
    assert res.code == 0, res.err
    assert res.json["succeeded"] == 3
    assert {ws.read(f"w/{i}.txt").split(":")[1] for i in range(3)} == {"0", "1", "2"}
    # ... and none of its processes outlived it
    assert marked_processes(token) == []


WHERE_STAGE = (
    '[stages.w]\nhandler = "h:where"\ninputs = { t = "in/{n}.txt" }\noutput = "w/{n}.txt"\n'
)


async def test_what_a_handler_prints_on_a_worker_is_kept_with_its_record(
    make_workspace: MakeWorkspace, dask: Cluster
) -> None:
    # Given a handler that prints and logs on a Dask worker, failing for one entity
    handler = (
        "def s(ctx, t: str) -> str:\n    print('printed on a worker', ctx.entity_id)\n"
        "    ctx.log.info('logged %s', t)\n    if t == 'bad':\n        raise ValueError(t)\n"
        "    return t\n"
    )
    stages = '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "o/{n}.txt"\n'
    ws = make_workspace(
        {
            "eventrunner.toml": dask_toml(dask.address),
            "pipelines/p.toml": stages,
            "handlers/h.py": handler,
            "in/a.txt": "good",
            "in/b.txt": "bad",
        }
    )
    # When it runs there
    outcome = await drain(ws.root)
    assert (outcome.succeeded, outcome.failed) == (1, 1)
    # Then `logs` shows each attempt's output, the success's and the failure's
    for eid, t in (("a", "good"), ("b", "bad")):
        shown = ws.sub("logs", "s", eid)
        assert shown.out == f"printed on a worker {eid}\nINFO: logged {t}\n", shown.err
