"""State on disk: manifests, failure records, the index cache and its dirty marker, the lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace
from serve_helpers import pid_alive

from eventrunner.core.errors import LockHeld
from eventrunner.state.hashing import hash_bytes
from eventrunner.state.store import Store

STATE = ".eventrunner"


def _assert_sorted_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys), keys
    return dict(pairs)


def _json_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.json"))


def test_manifests_failures_and_control_are_sorted_key_json(echo: Workspace) -> None:
    # Given a run with one failure and a hold
    echo.write(
        "handlers/echo.py",
        echo.read("handlers/echo.py").replace(
            'return {"words"', 'raise ValueError("x")\n    return {"words"'
        ),
    )
    echo.run(expect=1)
    assert echo.cli("hold", "shout", "a").code == 0

    files = _json_files(echo.path(STATE))

    assert any("/state/" in f.as_posix() for f in files)
    assert any("/failures/" in f.as_posix() for f in files)
    assert echo.path(f"{STATE}/control.json") in files
    for f in files:
        json.loads(f.read_text(), object_pairs_hook=_assert_sorted_keys)


def test_manifest_records_content_hashes_of_inputs_and_outputs(echo: Workspace) -> None:
    echo.run()

    [path] = echo.path(f"{STATE}/state/echo.shout").glob("a.json")
    manifest = json.loads(path.read_text())

    assert manifest["inputs"] == {"text": {"inbox/a.txt": hash_bytes(b"hello world\n")}}
    assert manifest["outputs"] == {"shouted/a.txt": hash_bytes(b"HELLO WORLD!\n")}
    assert (manifest["stage"], manifest["entity"], manifest["values"]) == (
        "echo.shout",
        "a",
        {"name": "a"},
    )


def test_run_leaves_no_temporary_files(echo: Workspace) -> None:
    echo.run()

    assert [p for p in echo.root.rglob("*") if p.name.startswith(".er-tmp-")] == []


def test_damaged_manifest_means_stale_not_an_error(echo: Workspace) -> None:
    # Given a fresh state whose manifest is then overwritten with garbage, cache invalidated
    echo.run()
    echo.write(f"{STATE}/state/echo.shout/a.json", b"\x00\xffnot json{")
    echo.write(f"{STATE}/index.dirty", b"")

    # Then status works and the state is stale (no manifest), the others fresh
    assert echo.cli("status", "--json").code == 0
    assert echo.explain("a", "shout")["state"] == "stale"
    assert echo.reasons("a", "shout") == {"MISSING"}
    assert echo.states()[("echo.shout", "b")] == "fresh"

    # And a run repairs it
    assert echo.run()["executed"] == 1
    assert echo.states()[("echo.shout", "a")] == "fresh"


def test_damaged_index_cache_is_rebuilt_from_manifests(echo: Workspace) -> None:
    echo.run()
    echo.write(f"{STATE}/index.sqlite", b"garbage")

    assert set(echo.states().values()) == {"fresh"}
    assert echo.run()["executed"] == 0


def test_manifest_reader_returns_none_for_damaged_files(tmp_path: Path) -> None:
    store = Store(tmp_path / STATE)
    path = store.manifest_path("p.s", "a")
    path.parent.mkdir(parents=True)

    for content in (b"", b"\xff\xfe", b'{"stage": "p.s"', b'{"stage": "p.s"}', b"[1, 2]"):
        path.write_bytes(content)
        assert store.read_manifest("p.s", "a") is None, content


def test_index_cache_is_used_when_clean_and_ignored_when_dirty(echo: Workspace) -> None:
    # Given an up-to-date workspace with a clean cache
    echo.run()
    assert echo.exists(f"{STATE}/index.sqlite")
    assert not echo.exists(f"{STATE}/index.dirty")

    # When a manifest is deleted by hand behind the cache's back
    echo.delete(f"{STATE}/state/echo.count/b.json")

    # Then the clean cache still answers (it was used, not the manifests)
    assert echo.states()[("echo.count", "b")] == "fresh"

    # When the dirty marker exists
    echo.write(f"{STATE}/index.dirty", b"")

    # Then the cache is ignored and the rebuild sees the missing manifest
    assert echo.states()[("echo.count", "b")] == "stale"
    assert echo.reasons("b", "count") == {"MISSING"}


def test_successful_run_leaves_a_clean_cache(echo: Workspace) -> None:
    echo.run()
    echo.write("inbox/c.txt", "new file\n")
    echo.run()

    assert echo.exists(f"{STATE}/index.sqlite")
    assert not echo.exists(f"{STATE}/index.dirty")


# -- the workspace lock --------------------------------------------------------------------

HOLDER = """\
import sys
from pathlib import Path

from eventrunner.state.store import Store

Store(Path(sys.argv[1])).acquire_lock("serve")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lock_holder(echo: Workspace) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the workspace lock until the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(echo.path(STATE))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_run_exits_3_naming_the_holder_while_another_process_holds_the_lock(
    echo: Workspace, lock_holder: subprocess.Popen[str]
) -> None:
    res = echo.cli("run")

    assert res.code == 3
    assert f"pid {lock_holder.pid}" in res.err
    assert "serve" in res.err
    assert not echo.exists("shouted")


def test_run_in_a_real_process_exits_3_without_traceback_while_locked(
    echo: Workspace, lock_holder: subprocess.Popen[str]
) -> None:
    res = echo.sub("run")

    assert res.code == 3
    assert f"pid {lock_holder.pid}" in res.err
    assert "Traceback" not in res.err


def test_state_changing_commands_exit_3_while_locked(
    echo: Workspace, lock_holder: subprocess.Popen[str]
) -> None:
    for args in (["hold", "shout"], ["invalidate", "shout"], ["retry"], ["prune"]):
        res = echo.cli(*args)
        assert res.code == 3, args


def test_reading_commands_and_dry_run_work_while_locked(
    echo: Workspace, lock_holder: subprocess.Popen[str]
) -> None:
    assert echo.cli("status").code == 0
    assert echo.cli("run", "--dry-run").code == 0
    assert echo.cli("prune", "--dry-run").code == 0


def test_lock_of_a_killed_process_does_not_block_the_next_run(
    echo: Workspace, lock_holder: subprocess.Popen[str]
) -> None:
    # Given the holder dies without releasing (its lock file keeps its pid)
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait(timeout=30)

    # Then the next run takes the lock
    assert echo.run()["executed"] == 5


def test_lock_tells_whether_the_previous_holder_stopped_cleanly(tmp_path: Path) -> None:
    # Given a holder that releases cleanly
    store = Store(tmp_path / ".eventrunner")
    store.acquire_lock("run")
    store.release_lock()

    # Then the next holder sees a clean stop
    nxt = Store(tmp_path / ".eventrunner")
    nxt.acquire_lock("run")
    assert nxt.crashed_before is False
    nxt.release_lock()

    # When a holder is killed while holding the lock
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from eventrunner.state.store import Store\n"
        "s = Store(Path(sys.argv[1]))\n"
        "s.acquire_lock('serve')\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / ".eventrunner")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    # Then the next holder knows it crashed
    after = Store(tmp_path / ".eventrunner")
    after.acquire_lock("run")
    assert after.crashed_before is True
    after.release_lock()


# A handler that forks a child which outlives the run, as a handler starting a daemon by
# fork() without exec() would. The child keeps every descriptor it inherited except stdio
# (redirected so the test's pipes reach EOF); its pid is appended for the test to end it.
FORKING_HANDLERS = """\
import os
import time


def shout(ctx, text: str) -> str:
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            time.sleep(60)
        finally:
            os._exit(0)
    with open(ctx.data_root / "children.pid", "a") as fh:
        fh.write(f"{pid}\\n")
    return text.upper()


def count(text: str) -> dict:
    return {"words": len(text.split())}


def summary(counts: dict[str, dict]) -> str:
    return "".join(f"{k}={v['words']}\\n" for k, v in sorted(counts.items()))
"""


def test_a_handlers_forked_child_does_not_keep_the_workspace_lock(echo: Workspace) -> None:
    # Given a run whose handler forked a child that is still alive after the run exited
    echo.write("handlers/echo.py", FORKING_HANDLERS)
    try:
        first = echo.sub("run", "--json")
        assert first.code == 0, first.err
        child = int(echo.read("children.pid").split()[0])
        assert pid_alive(child)

        # When the workspace is used again while that child lives
        echo.write("inbox/c.txt", "a third file\n")
        second = echo.sub("run", "--json")

        # Then the lock is free: the run went through (it would exit 3, "locked")
        assert second.code == 0, second.err
        assert json.loads(second.out)["executed"] >= 1
        assert pid_alive(child)
    finally:
        pids = echo.read("children.pid").split() if echo.exists("children.pid") else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_a_second_lock_in_the_same_process_is_refused_and_keeps_the_first(
    tmp_path: Path,
) -> None:
    # Given this process holding the lock
    state = tmp_path / ".eventrunner"
    first = Store(state)
    first.acquire_lock("serve")
    try:
        # When another Store of this process asks for it, and for its holder's details
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            Store(state).acquire_lock("run")
        assert first.lock_holder() is not None

        # Then the first still holds it, as another process finds out
        probe = subprocess.run(
            [sys.executable, "-c", HOLDER, str(state)],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode != 0 and "LockHeld" in probe.stderr
    finally:
        first.release_lock()
