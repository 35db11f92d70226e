"""The index's maps read from its SQLite file on demand: unsaved changes win over the file until
saved, a reader during a save never sees half of it, deleted states stay deleted, and a damaged,
foreign or stale file is never trusted (what is read is the sidecar manifests' truth)."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import ECHO_HANDLERS, ECHO_PIPELINE, MakeWorkspace, Workspace

from eventrunner.core.records import Manifest
from eventrunner.run.engine import Engine
from eventrunner.state import indexmaps
from eventrunner.state.index import Index
from eventrunner.state.indexdb import IndexDB
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace

N = 40
STAGES = ("echo.shout", "echo.count", "echo.summary")


@pytest.fixture
def ws(make_workspace: MakeWorkspace) -> Workspace:
    files = {"pipelines/echo.toml": ECHO_PIPELINE, "handlers/echo.py": ECHO_HANDLERS}
    files.update({f"inbox/n{i:02d}.txt": f"entity {i}\n" for i in range(N)})
    ws = make_workspace(files)
    assert ws.run()["executed"] == 2 * N + 1
    return ws


def _load(ws: Workspace) -> Index:
    loaded = load_workspace(ws.root)
    return Index.load(loaded, Store(loaded.settings.state_dir))


def _put(path: Path, data: bytes) -> None:
    """Replace a cache file as a copy by hand would (a new file, its WAL gone), once every
    connection of this process to it is closed (the in-process run's too)."""
    gc.collect()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.with_name("new").write_bytes(data)
    os.replace(path.with_name("new"), path)
    (path.parent / "index.dirty").unlink(missing_ok=True)


def _truth(index: Index) -> dict[tuple[str, str], Manifest]:
    """Every sidecar manifest: what the index must agree with."""
    return {(m.stage, m.entity): m for m in index.store.iter_manifests()}


def _seen(index: Index) -> dict[tuple[str, str], Manifest]:
    """Every manifest the index gives, by iteration and by point lookup (they must agree)."""
    seen = {(q, eid): m for q in STAGES for eid, m in index.manifests[q].items()}
    for q, eid in list(seen):
        assert index.manifests[q].get(eid) == seen[q, eid]
        assert eid in index.manifests[q]
    return seen


def test_a_clean_load_reads_no_manifest_until_asked(ws: Workspace) -> None:
    # Given a clean cache
    index = _load(ws)

    # Then the load decoded nothing, yet every manifest is there and equal to its sidecar
    assert not index.recovered
    assert all(not index.manifests[q].pending for q in STAGES)
    assert _seen(index) == _truth(index)
    assert len(index.manifests["echo.shout"]) == N
    assert sorted(index.manifests["echo.count"]) == [f"n{i:02d}" for i in range(N)]


def test_an_unsaved_change_wins_over_the_file_until_saved(ws: Workspace) -> None:
    # Given a state forgotten and another re-recorded, not saved yet
    index = _load(ws)
    old = index.manifests["echo.shout"]["n03"]
    index.forget_state("echo.shout", "n01")
    index.outputs_pruned("echo.shout", "n03")  # a new manifest object for n03

    # Then the index answers with the changes while the file still holds the old records
    assert "n01" not in index.manifests["echo.shout"]
    assert "n01" not in set(index.manifests["echo.shout"])
    assert len(index.manifests["echo.shout"]) == N - 1
    assert index.manifests["echo.shout"]["n03"] is not old
    assert index.db.manifest("echo.shout", "n01") is not None

    # When saved
    index.save()

    # Then nothing is pinned any more, the file holds the changes, and a fresh load agrees
    assert not index.manifests["echo.shout"].pending
    assert index.db.manifest("echo.shout", "n01") is None
    assert "n01" not in index.manifests["echo.shout"]
    again = _load(ws)
    assert not again.recovered
    assert "n01" not in again.manifests["echo.shout"]
    assert len(again.manifests["echo.shout"]) == N - 1
    assert again.manifests["echo.shout"]["n03"] == old  # same record (nothing was dropped)


def test_a_change_made_during_a_save_stays_pinned(ws: Workspace) -> None:
    # Given a snapshot taken, then the same state changed again before the save ends
    index = _load(ws)
    back = _truth(index)["echo.count", "n05"]
    index.forget_state("echo.count", "n05")
    generation, data = index.snapshot()
    index.record_success(back, {})
    index.write_snapshot(data)
    index.saved(generation)

    # Then the index still answers with the later change, and the marker stays
    assert index.manifests["echo.count"].get("n05") == back
    assert "n05" in index.manifests["echo.count"].pending
    assert index.db.manifest("echo.count", "n05") is None
    assert index.dirty_path.exists()
    index.save()
    assert index.db.manifest("echo.count", "n05") == back
    assert not index.dirty_path.exists()


def test_a_reader_during_a_save_sees_all_of_it_or_none(ws: Workspace) -> None:
    # Given a big save (many stat/hash entries and every manifest) written in a thread
    index = _load(ws)
    reader = IndexDB(index.store.root)
    assert reader.open()
    before = sum(1 for _ in reader.file_entries())
    entry = next(iter(index.files.entries.items()))[1]
    for i in range(20_000):
        index.files.entries[f"extra/{i:05d}"] = entry
    for q in STAGES:
        for eid, m in list(index.manifests[q].items()):
            index.manifests[q][eid] = m.without_dropped()
    generation, data = index.snapshot()
    writer = threading.Thread(target=index.write_snapshot, args=(data,))

    # When other connections and the index itself read while it is written
    counts, answers = set(), set()
    writer.start()
    while writer.is_alive():
        counts.add(sum(1 for _ in reader.file_entries()))
        answers.add(index.files.entries.get("extra/19999") == entry)
    writer.join()
    index.saved(generation)

    # Then another connection saw the file before or after the save, never between
    assert counts <= {before, before + 20_000}
    # And the index always answered with the change (pinned until saved, then from the file)
    assert answers == {True}
    assert not index.files.entries.pending
    assert index.files.entries.get("extra/19999") == entry
    assert sum(1 for _ in reader.file_entries()) == before + 20_000
    reader.close()


def test_a_damaged_row_is_never_trusted_and_the_next_load_rebuilds(ws: Workspace) -> None:
    # Given a manifest row whose bytes were changed in the file (no dirty marker to say so)
    index = _load(ws)
    truth = _truth(index)
    index.db.close()
    conn = sqlite3.connect(index.cache_path)
    (rec,) = conn.execute(
        "SELECT rec FROM manifests WHERE stage = 'echo.shout' AND entity = 'n07'"
    ).fetchone()
    flipped = bytearray(rec)
    flipped[len(flipped) // 2] ^= 0x01
    with conn:
        conn.execute(
            "UPDATE manifests SET rec = ? WHERE stage = 'echo.shout' AND entity = 'n07'",
            (bytes(flipped),),
        )
    conn.close()

    # When the index reads it
    index = _load(ws)
    assert not index.recovered
    got = index.manifests["echo.shout"]["n07"]

    # Then it read the sidecar instead, says it is damaged, and the next load rebuilds
    assert got == truth["echo.shout", "n07"]
    assert index.damaged and index.dirty_path.exists()
    assert _seen(index) == truth
    index.save()
    assert index.dirty_path.exists()
    assert _load(ws).recovered


@pytest.mark.parametrize("table", ["manifests", "outputs"])
def test_a_damaged_page_that_hides_rows_without_an_error_is_found(
    ws: Workspace, table: str
) -> None:
    # Given a leaf page of the table whose cell count lost one: SQLite reads a row fewer and
    # says nothing, its own count(*) included (a seeded byte flip in a cell pointer did this)
    index = _load(ws)
    truth = _truth(index)
    outputs = {q: sorted(_outputs(truth, q)) for q in STAGES}
    index.db.close()
    gc.collect()
    conn = sqlite3.connect(index.cache_path)
    (pageno,) = conn.execute(
        "SELECT max(pageno) FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (table,)
    ).fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    raw = bytearray(index.cache_path.read_bytes())
    at = (pageno - 1) * size + 3  # the page header's 2-byte cell count
    raw[at : at + 2] = (int.from_bytes(raw[at : at + 2], "big") - 1).to_bytes(2, "big")
    _put(index.cache_path, bytes(raw))

    # When every stage's rows are scanned
    index = _load(ws)
    assert not index.recovered
    got = {q: sorted(index.stage_outputs(q)) for q in STAGES}
    seen = _seen(index)

    # Then the scan found the count short of the saved one: the sidecars answered, in full
    assert got == outputs
    assert seen == truth
    assert index.damaged and index.dirty_path.exists()
    assert _load(ws).recovered


def _outputs(truth: dict[tuple[str, str], Manifest], q: str) -> list[tuple[tuple[str, ...], ...]]:
    return [(tuple(m.output_paths), tuple(m.dropped)) for (s, _), m in truth.items() if s == q]


def test_a_damaged_or_cut_file_never_gives_a_wrong_record(ws: Workspace) -> None:
    # Given the cache file's bytes, damaged or cut at seeded places
    index = _load(ws)
    truth = _truth(index)
    index.db.close()
    gc.collect()
    path = index.cache_path
    whole = path.read_bytes()
    rng = random.Random(1515)
    for _ in range(12):
        raw = bytearray(whole)
        if rng.random() < 0.5:
            raw = raw[: rng.randrange(0, len(raw))]
        else:
            for _ in range(8):
                raw[rng.randrange(0, len(raw))] ^= 0xFF
        _put(path, bytes(raw))

        # Then whatever the index reads is the truth: rebuilt, or read lazily and checked
        index = _load(ws)
        assert _seen(index) == truth
        assert index.recovered or index.damaged or path.read_bytes() == bytes(raw)
        index.db.close()
    _put(path, whole[:100])
    assert ws.run()["executed"] == 0


def test_a_foreign_or_older_copy_of_the_file_is_not_trusted(ws: Workspace) -> None:
    # Given a copy of the cache taken before a change was saved
    index = _load(ws)
    index.db.close()
    gc.collect()
    old = index.cache_path.read_bytes()
    index = _load(ws)
    index.forget_state("echo.shout", "n02")
    index.save()
    index.db.close()

    # When the older copy is put back (its WAL gone), the seal disagrees: rebuilt
    _put(index.cache_path, old)
    again = _load(ws)
    assert again.recovered
    assert "n02" not in again.manifests["echo.shout"]

    # And a seal of another file is not trusted either
    again.save()
    again.db.close()
    again.seal_path.write_bytes(b"0" * 16)
    assert _load(ws).recovered


def test_output_paths_read_narrow_or_warm_are_the_manifests_outputs(ws: Workspace) -> None:
    # Given a state forgotten and not saved yet
    index = _load(ws)
    index.forget_state("echo.shout", "n04")
    truth = sorted(_outputs(_truth(index), "echo.shout"))

    # Then the narrow scan and the warm maps give the same outputs, the change included
    narrow = sorted(index.stage_outputs("echo.shout"))
    index.warm()
    assert index.manifests["echo.shout"].complete
    warm = sorted(index.stage_outputs("echo.shout"))
    assert narrow == warm == truth
    assert len(truth) == N - 1


@pytest.mark.parametrize("long_lived", [True, False])
def test_serve_keeps_bounded_caches_after_a_fan_in_walks_every_member(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, long_lived: bool
) -> None:
    # Given caches smaller than the fan-in (40 members), as 4,096 is against 100,000
    monkeypatch.setattr(indexmaps, "MANIFESTS_CACHED", 8)
    monkeypatch.setattr(indexmaps, "FILES_CACHED", 8)
    # and files older than the racy window, their hashes saved by a no-op run (as after any
    # restart): a file written within it is re-hashed, never read from the cache, so a run
    # quicker than the window left too few cached entries to walk (CI failed on that)
    old = os.stat(ws.root / "inbox/n00.txt").st_mtime - 10
    for path in ws.root.rglob("*"):
        if path.is_file() and ".eventrunner" not in path.parts:
            os.utime(path, (old, old))
    assert ws.run()["executed"] == 0
    index = _load(ws)

    async def check() -> str:
        engine = Engine(index, index.store, retry_in_run=long_lived)
        try:
            # When the aggregate is considered: its walk reads every member in one scan
            targets = list(engine.targets(["echo.summary"]))
            engine.consider(targets)
            return engine.verdict(*targets[0]).state
        finally:
            await engine.stop()

    assert asyncio.run(check()) == "fresh"
    # Then a long-lived engine (serve) goes back to bounded caches; a run keeps what it read
    assert index.manifests["echo.count"].complete is (not long_lived)
    assert index.files.entries.complete is (not long_lived)


def test_a_warm_in_steps_takes_in_what_a_save_between_its_steps_wrote(ws: Workspace) -> None:
    # Given a warm in steps that has read its snapshot of the file (one step taken)
    index = _load(ws)
    shout = index.manifests["echo.shout"]
    steps = shout.warm_in_steps(step=5)
    next(steps)
    # When, between its steps, one state is forgotten and saved (its row gone from the file
    # after the snapshot was read) and another changed and not saved
    index.forget_state("echo.shout", "n30")
    index.save()
    index.outputs_pruned("echo.shout", "n35")
    changed = shout["n35"]
    list(steps)
    # Then the map is complete and answers as the file and the unsaved change do
    assert shout.complete
    assert "n30" not in shout and shout.get("n30") is None
    assert shout["n35"] is changed
    assert len(shout) == N - 1
    assert _seen(index) == _truth(index)


def test_a_warm_in_steps_cut_by_a_cool_leaves_the_map_bounded_and_right(ws: Workspace) -> None:
    # Given a warm in steps under way, when the map is cooled (a rebuild, a damaged row)
    index = _load(ws)
    count = index.manifests["echo.count"]
    steps = count.warm_in_steps(step=5)
    next(steps)
    count.cool()
    list(steps)
    # Then it did not make the map complete, and every record still reads right
    assert not count.complete
    assert _seen(index) == _truth(index)
    # And a whole warm in steps makes it complete, agreeing with the point reads
    for _ in index.warm_in_steps():
        pass
    assert all(index.manifests[q].complete for q in STAGES) and index.files.entries.complete
    assert _seen(index) == _truth(index)


@pytest.fixture
def paged(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Index:
    """The index with its scans read 8 rows per statement (many pages at N entities): an
    open statement would pin every read of the connection to its snapshot."""
    monkeypatch.setattr("eventrunner.state.indexdb._PAGE", 8)
    return _load(ws)


def test_reads_between_the_steps_of_a_warm_see_what_a_save_committed_meanwhile(
    paged: Index,
) -> None:
    # Given a warm in steps of one map paused after its first step, mid-scan
    index = paged
    steps = index.manifests["echo.shout"].warm_in_steps(step=5)
    next(steps)
    # When another map's state is forgotten and saved meanwhile
    index.forget_state("echo.count", "n07")
    index.save()
    # Then a read of it (from the file: nothing of it is pinned or cached) sees the save
    assert index.manifests["echo.count"].get("n07") is None
    assert index.db.manifest("echo.count", "n07") is None
    list(steps)
    assert _seen(index) == _truth(index)


def test_a_scan_of_outputs_paused_across_a_save_loses_no_changed_state(paged: Index) -> None:
    # Given an unsaved change to an early state, and a scan of the stage's outputs paused
    # just past that state's row (skipped: the change is pending)
    index = paged
    index.outputs_pruned("echo.shout", "n01")
    changed = index.manifests["echo.shout"]["n01"]
    scan = index.stage_outputs("echo.shout")
    seen = [next(scan) for _ in range(3)]
    # When a save settles the change meanwhile (no longer pending), and the scan goes on
    index.save()
    seen += list(scan)
    # Then every state's outputs were given once, the changed one's as changed
    want = sorted(
        (tuple(m.output_paths), tuple(m.dropped)) for m in index.manifests["echo.shout"].values()
    )
    assert sorted(seen) == want
    assert (tuple(changed.output_paths), tuple(changed.dropped)) in seen
