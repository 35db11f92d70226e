"""The look begun early (state/lookahead.py): its stats taken by worker processes, real files."""

from __future__ import annotations

import marshal
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from eventrunner.core.errors import StorageError
from eventrunner.state import fastpath, statlook
from eventrunner.state.lookahead import PendingLook


def stamped(tmp_path: Path, n: int = 40, relative: bool = True) -> tuple[Path, list[Path]]:
    """n data files (in two folders) and a stamp vouching for their stats, as written by a run:
    their paths recorded relative to the workspace (as a run records them), or in full."""
    state = tmp_path / "ws" / ".eventrunner"
    state.mkdir(parents=True)
    files = []
    for i in range(n):
        path = tmp_path / "ws" / ("a" if i % 3 else "b") / f"f{i:03d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"file {i}\n")
        files.append(path)
    old = time.time() - 10  # outside the racy window, as after a while
    for path in [*files, *(f.parent for f in files)]:
        os.utime(path, (old, old))
    paths = sorted({str(f.parent) for f in files}) + [str(f) for f in files]
    root = os.path.join(tmp_path / "ws", "") if relative else ""
    assert fastpath.write(state, [], paths, "", {}, float(2**62), {"skipped": 0}, root=root)
    return state, files


def cut_short(state: Path) -> tuple[Path, dict[str, Any]]:
    """Drop the stamp's last stats triple: still loadable, but no look can compare its paths.
    Returns the stamp file and what it held before."""
    stamp_file = state / fastpath.STAMP
    with open(stamp_file, "rb") as fh:
        data = marshal.load(fh)
    names, raw = data["paths"]
    stamp_file.write_bytes(marshal.dumps({**data, "paths": (names, raw[:-24])}))
    return stamp_file, data


def workers_alive(stamp: Path) -> list[psutil.Process]:
    """Processes running statlook.py on this stamp (a worker left behind would show here)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if str(stamp) in cmd and any(c.endswith("statlook.py") for c in cmd):
            found.append(proc)
    return found


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_workers_find_what_the_look_in_process_finds_in_recorded_order(
    tmp_path: Path, workers: int, relative: bool
) -> None:
    # Given a stamp (its paths relative or in full), then an edit, a deletion and an edit
    # that keeps the size
    state, files = stamped(tmp_path, relative=relative)
    files[4].write_text("edited, longer\n")
    files[9].unlink()
    files[30].write_text("file 99\n")  # same size, new mtime

    # When the look runs in workers
    look = PendingLook(state, workers=workers, min_bytes=0).result()

    # Then it finds exactly what the in-process look finds, in the same order
    expected = fastpath.look(state)
    assert look is not None and expected is not None
    assert look.changed == expected.changed
    assert {str(files[4]), str(files[9]), str(files[30]), str(files[9].parent)} <= set(look.changed)
    assert look.incremental and not look.defs_changed
    assert workers_alive(state / fastpath.STAMP) == []


def test_a_look_counts_the_recorded_paths_of_a_folder_and_finds_given_ones(
    tmp_path: Path,
) -> None:
    # Given a stamp of files in a/ and b/ (paths relative to the workspace)
    state, files = stamped(tmp_path)
    look = fastpath.look(state)
    assert look is not None and look.unchanged
    ws = tmp_path / "ws"
    # Then it counts each folder's recorded files, without the folders themselves
    assert look.count_in(str(ws / "a")) == sum(1 for f in files if f.parent.name == "a")
    assert look.count_in(str(ws / "b")) == sum(1 for f in files if f.parent.name == "b")
    assert look.count_in(str(ws / "c")) == 0
    # And finds which of some paths it records
    assert look.listed([str(files[0]), str(ws / "a" / "new.txt")]) == {str(files[0])}
    # But a recorded path deeper in a folder leaves the folder's count unknown (a listing of
    # the folder would not show it)
    deep = ws / "a" / "sub" / "x.txt"
    deep.parent.mkdir()
    deep.write_text("x")
    paths = [str(f) for f in files] + [str(deep)]
    root = os.path.join(ws, "")
    assert fastpath.write(state, [], paths, "", {}, float(2**62), {"skipped": 0}, root=root)
    look = fastpath.look(state)
    assert look is not None
    assert look.count_in(str(ws / "a")) is None
    assert look.count_in(str(ws / "b")) == sum(1 for f in files if f.parent.name == "b")


def test_nothing_changed_is_an_unchanged_look_from_the_workers(tmp_path: Path) -> None:
    state, _ = stamped(tmp_path)
    look = PendingLook(state, workers=2, min_bytes=0).result()
    assert look is not None and look.unchanged


def test_the_parts_of_a_stamp_are_every_path_once_in_recorded_order() -> None:
    for count in (1, 2, 5, 17):
        names = [f"/d{i % 3}/name-{i}" + "x" * (i % 5) for i in range(count)]
        packed = "\0".join(names)
        raw = b"".join(i.to_bytes(8, "little", signed=True) * 3 for i in range(count))
        for n in (1, 2, 3, 4, 8, 20):
            got: list[bytes] = []
            firsts: list[int] = []
            for k in range(n):
                paths, stats = statlook.part(packed, raw, k, n)
                assert len(stats) == 3 * len(paths)
                firsts += [stats[3 * i] for i in range(len(paths))]
                got += paths
            assert got == [os.fsencode(p) for p in names], (count, n)
            assert firsts == list(range(count))  # each path keeps its own recorded stats


def test_a_worker_that_fails_is_a_start_up_error_naming_the_stamp(tmp_path: Path) -> None:
    # Given a stamp whose stats no longer match its paths (one triple short): loadable, but
    # no look can compare it
    state, _ = stamped(tmp_path)
    stamp_file, _ = cut_short(state)

    # When the look runs in workers, Then its failure is raised as a StorageError that says
    # what failed and what to do, and no worker is left behind
    pending = PendingLook(state, workers=2, min_bytes=0)
    assert pending.in_workers
    with pytest.raises(StorageError, match="start-up look") as caught:
        pending.result()
    assert str(stamp_file) in str(caught.value)
    assert "remove that file" in str(caught.value)
    assert workers_alive(stamp_file) == []


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_workers_tell_a_change_before_their_answer_and_no_change_only_at_the_end(
    tmp_path: Path, workers: int
) -> None:
    # Given a stamp nothing has changed since: the look says so, and its answer agrees
    state, files = stamped(tmp_path, n=300)
    pending = PendingLook(state, workers=workers, min_bytes=0)
    assert pending.maybe_changed() is False
    look = pending.result()
    assert look is not None and look.unchanged

    # When one file changes, Then a worker tells at once, and the answer names that file
    files[200].write_text("edited, longer\n")
    pending = PendingLook(state, workers=workers, min_bytes=0)
    assert pending.maybe_changed() is True
    look = pending.result()
    assert look is not None and look.changed == [str(files[200])]
    assert workers_alive(state / fastpath.STAMP) == []


def test_changed_definitions_or_a_failing_worker_never_read_as_no_change(
    tmp_path: Path,
) -> None:
    # Given a stamp whose stats no longer fit its paths: a worker fails before it can tell
    state, _ = stamped(tmp_path)
    stamp_file, data = cut_short(state)
    pending = PendingLook(state, workers=2, min_bytes=0)
    assert pending.maybe_changed() is True  # the failure is result()'s to raise
    with pytest.raises(StorageError, match="start-up look"):
        pending.result()
    # And a stamp whose definitions changed is a change without a worker's word
    data["defs"] = (str(tmp_path / "ws" / "gone.toml"), data["paths"][1][:24])
    stamp_file.write_bytes(marshal.dumps(data))
    pending = PendingLook(state, workers=2, min_bytes=0)
    assert pending.maybe_changed() is True
    look = pending.result()
    assert look is not None and look.defs_changed
    assert workers_alive(stamp_file) == []


def test_a_cancelled_look_leaves_no_worker_behind(tmp_path: Path) -> None:
    state, _ = stamped(tmp_path, n=400)
    pending = PendingLook(state, workers=3, min_bytes=0)
    pending.cancel()
    assert not pending.in_workers
    assert workers_alive(state / fastpath.STAMP) == []
    pending.cancel()  # twice is fine


def test_a_small_stamp_is_looked_at_in_process(tmp_path: Path) -> None:
    state, files = stamped(tmp_path)
    pending = PendingLook(state)  # the default threshold: a few dozen paths are not worth it
    assert not pending.in_workers
    files[0].write_text("edited, longer\n")
    look = pending.result()
    assert look is not None and look.changed == [str(files[0])]


def test_no_stamp_is_no_look_and_no_worker(tmp_path: Path) -> None:
    state = tmp_path / ".eventrunner"
    state.mkdir()
    pending = PendingLook(state, min_bytes=0)
    assert not pending.in_workers
    assert pending.result() is None
