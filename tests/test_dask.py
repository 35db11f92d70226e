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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeWorkspace, Workspace
from dask_helpers import Cluster, cluster, marked_processes

from eventrunner.core.errors import HandlerTimeout
from eventrunner.run.engine import Engine, Outcome
from eventrunner.run.evaluate import InputFile
from eventrunner.run.executors import Call
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace import loader
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


async def drain(root: Path) -> Outcome:
    """What `eventrunner run` does, on this loop: every stale state, once."""
    ws = load_workspace(root)
    store = Store(ws.settings.state_dir)
    index = Index.load(ws, store)
    engine = Engine(index, store, jobs=2)
    engine.consider(engine.planner.all_targets(), fresh_pass=True)
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


# -- failures ------------------------------------------------------------------------------------
BLOCKING = """\
import os
import time
from pathlib import Path


def work(ctx, t: str) -> str:
    folder = Path(ctx.params["pids"])
    folder.mkdir(exist_ok=True)
    (folder / f"{ctx.entity_id}-{ctx.attempt}").write_text(str(os.getpid()))
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


def _call(root: Path, qualname: str, entity: str) -> Call:
    """The call the engine would make for one (stage, entity) of a loaded workspace."""
    loaded = load_workspace(root)
    stage, ref = loaded.graph.stages[qualname], loaded.handlers[qualname]
    return Call(
        stage=stage,
        entity=entity,
        handler=ref,
        func=loader.load(ref),
        files=[InputFile("t", None, f"in/{entity}.txt", "")],
        values={"n": entity},
        attempt=1,
        root=root,
        code=loaded.code[qualname],
    )


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
            await pool.submit(_call(ws.root, "p.s", "a"))
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
