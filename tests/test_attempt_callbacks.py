"""Attempts by callback and group commits followed per batch (issue 15, cold throughput).

A cold run no longer spends a task, a commit future and an evaluator pass per execution: an
attempt ends in its executor future's callback, the committer tells each commit of a batch
by callback, and the engine checks what the whole batch affects in one pass. These pin what
that must keep: every commit told (its error too) before the batch is followed, the files
in place when it is told, and a SIGKILL at any point still leaving no state fresh with wrong
content. State files are still json's bytes, without the reference cycles json.dumps leaves
per call (the cycle collector ran every few executions of a cold run).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MakeWorkspace, Workspace

from eventrunner.run.commit import Commit, Committer
from eventrunner.state.files import dumps, temp_path, write_file
from eventrunner.state.store import Store


def _commit_of(root: Path, name: str) -> Commit:
    final = root / "out" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    write_file(tmp, name.encode())
    return Commit(temps=[(tmp, final)])


async def test_each_commit_of_a_batch_is_told_in_place_before_the_batch_is_followed(
    tmp_path: Path,
) -> None:
    # Given a committer whose batch hook notes what had been told by then
    root = tmp_path / "data"
    told: list[tuple[str, BaseException | None, bool]] = []
    batches: list[int] = []
    committer = Committer(
        Store(tmp_path / "state"), root, after_batch=lambda: batches.append(len(told))
    )
    async with committer:
        # When five commits are queued in one go, each with a callback
        commits = [_commit_of(root, f"{i}.txt") for i in range(5)]
        for i, commit in enumerate(commits):
            final = commit.temps[0][1]

            def done(
                error: BaseException | None, name: str = f"{i}.txt", final: Path = final
            ) -> None:
                told.append((name, error, final.exists()))

            committer.submit_then(commit, done)
        await committer.flush()
    # Then every commit was told without an error, its output already in place
    assert told == [(f"{i}.txt", None, True) for i in range(5)]
    # And the batch hook ran after the commits it followed were told (once per batch)
    assert batches and batches[-1] == 5 and sum(1 for b in batches if b) == len(batches)


async def test_a_commit_that_cannot_be_put_in_place_is_told_its_error(tmp_path: Path) -> None:
    # Given a commit whose output temp vanished before the commit (an I/O failure)
    root = tmp_path / "data"
    commit = _commit_of(root, "gone.txt")
    os.unlink(commit.temps[0][0])
    told: list[BaseException | None] = []
    followed: list[bool] = []
    async with Committer(
        Store(tmp_path / "state"), root, after_batch=lambda: followed.append(True)
    ) as c:
        # When it is committed by callback
        c.submit_then(commit, told.append)
        await c.flush()
    # Then the callback hears the error (the engine records it as a failure), and the
    # batch is still followed
    assert len(told) == 1 and isinstance(told[0], OSError)
    assert followed == [True]
    assert not (root / "out" / "gone.txt").exists()


N = 200

CHAIN = """\
name = "chain"

[stages.a]
handler = "h:a"
inputs  = { text = "inbox/{n}.txt" }
output  = "a/{n}.txt"

[stages.b]
handler = "h:b"
inputs  = { text = "a/{n}.txt" }
output  = "b/{n}.txt"

[stages.c]
handler = "h:c"
inputs  = { text = "b/{n}.txt" }
output  = "c/{n}.txt"
"""

# Cheap handlers, so that many commits share a batch; each notes its start first so the
# test can kill at a known point.
CHAIN_HANDLERS = """\
def _note(ctx):
    with open(ctx.data_root / "progress.log", "a") as fh:
        fh.write(ctx.stage + "\\n")


def a(ctx, text: str) -> str:
    _note(ctx)
    return text.upper()


def b(ctx, text: str) -> str:
    _note(ctx)
    return text[::-1]


def c(ctx, text: str) -> str:
    _note(ctx)
    return f"{len(text)}:{text}"
"""


def _expected(ws: Workspace, stage: str, n: str) -> str:
    a = ws.read(f"inbox/{n}.txt").upper()
    b = a[::-1]
    return {"chain.a": a, "chain.b": b, "chain.c": f"{len(b)}:{b}"}[stage]


def _started(ws: Workspace) -> int:
    try:
        return ws.path("progress.log").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture
def chain(make_workspace: MakeWorkspace) -> Workspace:
    files = {"pipelines/chain.toml": CHAIN, "handlers/h.py": CHAIN_HANDLERS}
    files.update({f"inbox/e{i:03d}.txt": f"entity {i}\n" for i in range(N)})
    return make_workspace(files)


@pytest.mark.parametrize("kill_at", [40, 250, 520])
def test_sigkill_while_group_commits_are_followed_leaves_no_fresh_state_wrong(
    chain: Workspace, kill_at: int
) -> None:
    # Given a cold run of a three-stage chain with four workers (batches of many commits,
    # each batch followed downstream in one pass), killed once `kill_at` handlers started
    cmd = [sys.executable, "-m", "eventrunner.cli", "-w", str(chain.root), "run", "-j", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _started(chain) < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    # Then every state reported fresh has exactly the right output, and some are not fresh
    states = chain.states()
    fresh = [(q, n) for (q, n), state in states.items() if state == "fresh"]
    for q, n in fresh:
        assert chain.read(f"{q.split('.')[1]}/{n}.txt") == _expected(chain, q, n), (q, n)
    assert len(fresh) < 3 * N

    # When the run is repeated, it completes: every output right, every state fresh
    res = chain.sub("run", "-j", "4", "--json")
    assert res.code == 0, res.err
    for i in range(N):
        for q in ("chain.a", "chain.b", "chain.c"):
            n = f"e{i:03d}"
            assert chain.read(f"{q.split('.')[1]}/{n}.txt") == _expected(chain, q, n), (q, n)
    assert set(chain.states().values()) == {"fresh"}
    assert chain.run()["executed"] == 0


def _random_value(rnd: random.Random, depth: int = 0) -> object:
    kind = rnd.randrange(11 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rnd.random() < 0.5
    if kind == 2:
        return rnd.randint(-(10**20), 10**20)
    if kind == 3:
        return rnd.choice([0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, rnd.random() * 1e6])
    if kind in (4, 5, 6):
        return "".join(rnd.choice('ab"\\\n\t\x00é€𝄞/ ') for _ in range(rnd.randrange(6)))
    if kind in (7, 8):
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {
        "".join(rnd.choice('ké"\n') for _ in range(rnd.randrange(4))): _random_value(rnd, depth + 1)
        for _ in range(rnd.randrange(4))
    }


def test_state_files_are_still_exactly_what_json_dumps_writes_indented_and_sorted() -> None:
    # Given random nestings of every type a record holds (NaN, infinities, -0.0, escapes,
    # astral characters, empty containers) and a real manifest's data
    rnd = random.Random(15)
    values = [_random_value(rnd) for _ in range(5000)]
    values.append({"inputs": {"data": {"upper/e1.txt": "ab" * 16}}, "started": 1.5, "attempt": 1})
    for value in values:
        # When it is written as a state file
        # Then the bytes are json.dumps's own, sorted and indented
        want = json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        assert dumps(value) == want.encode(), value
    # And a value json cannot encode is refused the same way
    with pytest.raises(TypeError):
        dumps({"x": object()})


def test_writing_a_state_file_leaves_no_garbage_for_the_cycle_collector() -> None:
    # Given the collector idle and a manifest's data
    manifest = {"stage": "p.s", "values": {"n": "e1"}, "outputs": {"o/e1": "ab" * 16}, "t": 1.5}
    gc.collect()
    gc.disable()
    try:
        # When it is written a thousand times
        for _ in range(1000):
            dumps(manifest)
        # Then nothing of it was left in reference cycles (json.dumps with an indent leaves
        # about thirty objects a call, freed only by a collection)
        assert gc.collect() == 0
    finally:
        gc.enable()
