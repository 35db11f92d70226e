"""Index crash safety: SIGKILL real runs at seeded points while the index cache is in use (during
the runs and during their saves), and damage its file at seeded offsets; a restart's states are
right, a torn or damaged index is never trusted."""

from __future__ import annotations

import gc
import os
import random
import signal
from pathlib import Path

from conftest import MakeWorkspace, Workspace
from test_crash import HANDLERS, PIPELINE, expected, kill_after, output_of

from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

N = 120


def _workspace(make_workspace: MakeWorkspace) -> Workspace:
    files = {"pipelines/crash.toml": PIPELINE, "handlers/h.py": HANDLERS}
    files.update({f"inbox/e{i:03d}.txt": f"entity {i} says hello\n" for i in range(N)})
    return make_workspace(files)


def _all_right(ws: Workspace) -> None:
    for i in range(N):
        n = f"e{i:03d}"
        for stage in ("crash.first", "crash.second"):
            assert ws.read(output_of(stage, n)) == expected(ws, stage, n), (stage, n)


def _no_fresh_state_is_wrong(ws: Workspace) -> None:
    for (stage, n), state in ws.states().items():
        if state == "fresh":
            assert ws.read(output_of(stage, n)) == expected(ws, stage, n), (stage, n)


def test_runs_killed_at_seeded_points_between_index_saves_restart_right(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace run once (the whole cache written), then edited and run again and again,
    # each completed run saving its changes and each killed one leaving the index dirty
    ws = _workspace(make_workspace)
    assert ws.sub("run", "-j", "2").code == 0
    rng = random.Random(15)
    for round_ in range(4):
        changed = rng.sample(range(N), 30)
        for i in changed:
            ws.write(f"inbox/e{i:03d}.txt", f"entity {i} round {round_}\n")
        # When a run is killed with SIGKILL after a seeded number of executions
        code = kill_after(ws, rng.randint(1, 2 * len(changed) - 1))
        assert code == -signal.SIGKILL, "the run finished before it could be killed"
        # Then no state is reported fresh with wrong content
        _no_fresh_state_is_wrong(ws)
        # And a completed run after it makes every state right (and saves a rebuilt cache)
        assert ws.sub("run", "-j", "2").code == 0
        _all_right(ws)
        assert ws.run()["executed"] == 0
    # And an edit after a clean run is saved as a change that the next run trusts
    ws.write("inbox/e001.txt", "entity 1 last\n")
    assert ws.run()["executed"] == 2
    loaded = load_workspace(ws.root)
    index = Index.load(loaded, Store(loaded.settings.state_dir))
    assert not index.recovered
    assert index.manifests["crash.first"]["e001"] == index.store.read_manifest(
        "crash.first", "e001"
    )
    index.db.close()
    assert ws.run()["executed"] == 0
    _all_right(ws)


def _truth_agrees(ws: Workspace) -> Index:
    """Load the index; every manifest it gives is the sidecar's (rebuilt, or read and checked)."""
    loaded = load_workspace(ws.root)
    index = Index.load(loaded, Store(loaded.settings.state_dir))
    truth = {(m.stage, m.entity): m for m in index.store.iter_manifests()}
    seen = {(q, e): m for q in index.manifests for e, m in index.manifests[q].items()}
    assert seen == truth
    for q, e in truth:
        assert index.manifests[q].get(e) == truth[q, e]
    index.db.close()
    return index


def _put(cache: Path, data: bytes) -> None:
    """Replace the cache file (a new file, as a copy by hand makes; its WAL gone, no dirty
    marker left to say anything), once this process's connections to it are closed."""
    gc.collect()
    for suffix in ("-wal", "-shm"):
        cache.with_name(cache.name + suffix).unlink(missing_ok=True)
    cache.with_name("new").write_bytes(data)
    os.replace(cache.with_name("new"), cache)
    (cache.parent / "index.dirty").unlink(missing_ok=True)


def test_a_torn_or_damaged_index_file_is_never_trusted(make_workspace: MakeWorkspace) -> None:
    # Given an index cache holding saved changes (a run after an edit saves one)
    ws = _workspace(make_workspace)
    assert ws.sub("run", "-j", "2").code == 0
    ws.write("inbox/e007.txt", "entity 7 changed\n")
    assert ws.run()["executed"] == 2
    state = ws.root / ".eventrunner"
    cache = state / "index.sqlite"
    gc.collect()  # the in-process run's connection: closed, its WAL folded into the file
    whole = cache.read_bytes()
    assert not _truth_agrees(ws).recovered

    rng = random.Random(1515)
    for _ in range(8):
        # When the file is cut (a torn copy) or bytes of it are flipped, even with no dirty
        # marker left to say so
        raw = bytearray(whole)
        if rng.random() < 0.5:
            raw = raw[: rng.randrange(0, len(raw))]
        else:
            for _ in range(4):
                raw[rng.randrange(0, len(raw))] ^= 0xFF
        _put(cache, bytes(raw))
        # Then whatever the index gives is the manifests' truth
        _truth_agrees(ws)
    _put(cache, whole[:4096])
    assert ws.run()["executed"] == 0
    _all_right(ws)


def test_runs_killed_at_seeded_points_of_their_save_restart_right(
    make_workspace: MakeWorkspace,
) -> None:
    # Given runs that change every state, so that their saves write hundreds of records
    ws = _workspace(make_workspace)
    assert ws.sub("run", "-j", "2").code == 0
    rng = random.Random(151)
    state = ws.root / ".eventrunner"
    for round_ in range(4):
        for i in range(N):
            ws.write(f"inbox/e{i:03d}.txt", f"entity {i} save round {round_}\n")
        # When a run is killed once all but a seeded few of its executions started, up to
        # its last ones (its save is under way or about to be)
        code = kill_after(ws, 2 * N - rng.randint(0, 3))
        assert code in (0, -signal.SIGKILL)
        # Then no state is reported fresh with wrong content, the index agrees with the
        # manifests, and a completed run makes every state right
        _no_fresh_state_is_wrong(ws)
        _truth_agrees(ws)
        assert ws.sub("run", "-j", "2").code == 0
        _all_right(ws)
        assert ws.run()["executed"] == 0
        assert (state / "index.seal").exists()
