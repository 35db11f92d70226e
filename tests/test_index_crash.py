"""Index crash safety: SIGKILL real runs at seeded points while the index journal is in use, and
tear the journal at seeded offsets; a restart's states are right, a torn index is never trusted."""

from __future__ import annotations

import random
import signal

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


def test_runs_killed_at_seeded_points_between_journal_saves_restart_right(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace run once (a whole snapshot), then edited and run again and again, each
    # completed run appending a journal frame and each killed one leaving the index dirty
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
        # And a completed run after it makes every state right (and saves a frame or a whole)
        assert ws.sub("run", "-j", "2").code == 0
        _all_right(ws)
        assert ws.run()["executed"] == 0
    # And an edit after a clean run is saved as a journal frame that the next run trusts
    ws.write("inbox/e001.txt", "entity 1 last\n")
    assert ws.run()["executed"] == 2
    assert (ws.root / ".eventrunner" / "index.journal").stat().st_size > 20
    assert ws.run()["executed"] == 0
    _all_right(ws)


def test_a_torn_or_damaged_journal_is_never_trusted(make_workspace: MakeWorkspace) -> None:
    # Given a journal holding frames (a run after an edit appends one)
    ws = _workspace(make_workspace)
    assert ws.sub("run", "-j", "2").code == 0
    ws.write("inbox/e007.txt", "entity 7 changed\n")
    assert ws.run()["executed"] == 2
    state = ws.root / ".eventrunner"
    whole = (state / "index.journal").read_bytes()
    assert len(whole) > 40
    loaded = load_workspace(ws.root)
    assert not Index.load(loaded, Store(loaded.settings.state_dir)).recovered

    rng = random.Random(1515)
    for _ in range(8):
        # When the journal is cut where a SIGKILL mid-append would leave it (or a byte of a
        # frame is flipped), even with no dirty marker left to say so
        raw = bytearray(whole)
        if rng.random() < 0.5:
            raw = raw[: rng.randrange(21, len(raw))]
        else:
            raw[rng.randrange(33, len(raw))] ^= 0xFF
        (state / "index.journal").write_bytes(bytes(raw))
        (state / "index.dirty").unlink(missing_ok=True)
        # Then the index is rebuilt from the manifests, and every state is right
        index = Index.load(loaded, Store(loaded.settings.state_dir))
        assert index.recovered
        assert index.manifests["crash.second"]["e007"].entity == "e007"
    (state / "index.journal").write_bytes(whole[:21])
    assert ws.run()["executed"] == 0
    _all_right(ws)
