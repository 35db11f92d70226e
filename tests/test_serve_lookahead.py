"""serve's start and run's look in worker processes: what changed while down is still caught up
(before ready), a failed look is a clear start-up error for serve and a full check for run, and
flat source folders are watched without recursion."""

from __future__ import annotations

import asyncio
import marshal
import subprocess
import sys
from pathlib import Path

import psutil
from conftest import ECHO_PIPELINE, LOGGED_ECHO_HANDLERS, MakeWorkspace, Workspace, age
from test_serve_stamp import serve_until_idle, settled

from eventrunner.service.watched import flat, watch_targets
from eventrunner.state import fastpath, lookahead
from eventrunner.state.statlook import ABSENT
from eventrunner.workspace.load import load_workspace


def inflate(ws: Workspace, extra: int = 20_000, *, truncate: bool = False) -> Path:
    """Add `extra` paths recorded as missing (still missing: unchanged) to the workspace's
    stamp, so that it is large enough for serve to take its stats in worker processes;
    `truncate`: drop the last stats triple, so that no look can compare it."""
    stamp = ws.root / ".eventrunner" / fastpath.STAMP
    with open(stamp, "rb") as fh:
        data = marshal.load(fh)
    names, raw = data["paths"]
    fake = "\0".join(str(ws.root / "never" / f"absent-{i:06d}.txt") for i in range(extra))
    stats = b"".join(n.to_bytes(8, sys.byteorder, signed=True) for n in ABSENT) * extra
    raw = raw + stats
    data["paths"] = (names + "\0" + fake, raw[:-24] if truncate else raw)
    stamp.write_bytes(marshal.dumps(data))
    assert stamp.stat().st_size >= lookahead.WORKERS_FROM
    return stamp


def test_a_change_made_while_down_is_queued_when_the_look_runs_in_workers(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace whose stamp is large, and an edit made while nothing ran
    ws = settled(make_workspace)
    inflate(ws)
    ws.write("inbox/hello.txt", "hello from the workers\n")
    age(ws)

    # When serve starts (its look in worker processes) and stops
    rt = asyncio.run(serve_until_idle(ws))

    # Then the edit was found by the look and caught up, and only it
    assert rt.start_mode == "incremental"
    assert sorted(ws.runs()) == ["count hello", "shout hello", "summary _"]
    assert ws.read("shouted/hello.txt") == "HELLO FROM THE WORKERS!\n"


def test_a_file_added_while_down_is_queued_when_the_look_runs_in_workers(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a large stamp and a source file added while nothing ran (its folder changed:
    # the index loaded beside the look is set aside for a scan)
    ws = settled(make_workspace)
    inflate(ws)
    ws.write("inbox/new.txt", "brand new\n")
    age(ws)

    rt = asyncio.run(serve_until_idle(ws))

    assert rt.start_mode == "incremental"
    assert sorted(ws.runs()) == ["count new", "shout new", "summary _"]
    assert ws.read("shouted/new.txt") == "BRAND NEW!\n"


def test_serve_whose_look_fails_exits_with_a_clear_error_and_no_worker_left(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    # Given a stamp that loads but whose stats no longer match its paths
    ws = settled(make_workspace)
    stamp = inflate(ws, truncate=True)

    # When serve starts
    proc = subprocess.run(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws.root), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then it refuses to start, says which look failed and what to do, and leaves no worker
    assert proc.returncode != 0
    assert "eventrunner: serving" not in proc.stdout
    assert "start-up look" in proc.stderr and str(stamp) in proc.stderr
    assert "remove that file" in proc.stderr
    left = [p for p in psutil.process_iter(["cmdline"]) if str(stamp) in (p.info["cmdline"] or [])]
    assert left == []
    # And removing the stamp, as told, gives a full start
    stamp.unlink()
    report = ws.run()
    assert report["mode"] != "stat"


def test_a_flat_source_folder_is_watched_without_recursion(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {"pipelines/echo.toml": ECHO_PIPELINE, "handlers/echo.py": LOGGED_ECHO_HANDLERS}
    )
    (ws.root / "inbox").mkdir()
    loaded = load_workspace(ws.root)
    data_paths, _ = watch_targets(loaded)
    assert data_paths == [ws.root / "inbox"]
    assert flat(loaded, data_paths)


def test_sources_in_subfolders_or_at_the_root_are_watched_recursively(
    make_workspace: MakeWorkspace,
) -> None:
    nested = ECHO_PIPELINE.replace("inbox/{name}.txt", "inbox/{day}/{name}.txt")
    assert nested != ECHO_PIPELINE
    ws = make_workspace({"pipelines/echo.toml": nested, "handlers/echo.py": LOGGED_ECHO_HANDLERS})
    (ws.root / "inbox").mkdir()
    loaded = load_workspace(ws.root)
    assert not flat(loaded, watch_targets(loaded)[0])

    # A data root watched whole (its drop folder not there yet) is recursive too
    ws2 = make_workspace(
        {"pipelines/echo.toml": ECHO_PIPELINE, "handlers/echo.py": LOGGED_ECHO_HANDLERS}
    )
    loaded2 = load_workspace(ws2.root)
    data_paths, _ = watch_targets(loaded2)
    assert data_paths == [loaded2.settings.data_root]
    assert not flat(loaded2, data_paths)


def test_run_takes_a_large_look_in_workers_and_answers_as_the_look_in_process_would(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a settled workspace whose stamp is large enough for worker processes
    ws = settled(make_workspace)
    inflate(ws)

    # When nothing changed, a run answers from the stats alone
    quiet = ws.sub("run", "--json")
    assert quiet.code == 0 and quiet.json["mode"] == "stat", quiet.stderr

    # And when an input changed, the run follows only that change
    ws.runs()
    ws.write("inbox/hello.txt", "hello from the workers\n")
    age(ws)
    changed = ws.sub("run", "--json")
    assert changed.code == 0 and changed.json["mode"] == "incremental", changed.stderr
    assert sorted(ws.runs()) == ["count hello", "shout hello", "summary _"]
    assert ws.read("shouted/hello.txt") == "HELLO FROM THE WORKERS!\n"


def test_run_whose_stamp_stats_do_not_read_takes_the_full_path_and_leaves_no_worker(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a stamp that loads but whose stats no longer match its paths (its workers fail)
    ws = settled(make_workspace)
    stamp = inflate(ws, truncate=True)
    ws.write("inbox/hello.txt", "hello again\n")
    age(ws)

    # When `run` runs
    result = ws.sub("run", "--json")

    # Then it does not trust the stamp: a full check, the change built, no worker left behind
    assert result.code == 0, result.stderr
    assert result.json["mode"] == "full"
    assert ws.read("shouted/hello.txt") == "HELLO AGAIN!\n"
    left = [p for p in psutil.process_iter(["cmdline"]) if str(stamp) in (p.info["cmdline"] or [])]
    assert left == []


def test_a_stamp_whose_definition_stats_do_not_read_is_no_stamp_with_the_look_in_workers(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a large stamp whose definitions' stats no longer match their paths
    ws = settled(make_workspace)
    stamp = inflate(ws)
    data = marshal.loads(stamp.read_bytes())
    names, raw = data["defs"]
    data["defs"] = (names, raw[:-24])
    stamp.write_bytes(marshal.dumps(data))
    ws.write("inbox/hello.txt", "hello once more\n")
    age(ws)

    # When serve starts, and later a run: both check in full instead of failing
    rt = asyncio.run(serve_until_idle(ws))
    assert rt.start_mode == "full"
    assert ws.read("shouted/hello.txt") == "HELLO ONCE MORE!\n"
    stamp.write_bytes(marshal.dumps(data))
    result = ws.sub("run", "--json")
    assert result.code == 0 and result.json["mode"] == "full", result.stderr
