"""The workspace cache (workspace/cache.py): `run` and `serve` reuse a validated workspace only
while nothing it was loaded from changed, and a cached `run` never imports pydantic."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ECHO_HANDLERS, ECHO_PIPELINE, MakeWorkspace
from conftest import Workspace as Dir

from eventrunner.workspace import cache
from eventrunner.workspace.load import Workspace, load_workspace


def _settled(root: Path, deadline_s: float = 10.0) -> None:
    """Wait until every file and folder of the workspace's definitions changed longer ago than
    the racy window (a cache is written only then)."""
    deadline = time.monotonic() + deadline_s
    while True:
        ctimes = [s[2] for _, s in cache.stats(root) if s is not None]
        if all(time.time_ns() - c > 2 * cache.RACY_NS for c in ctimes):
            return
        assert time.monotonic() < deadline, "files kept changing"
        time.sleep(0.02)


def _cached(root: Path) -> Workspace | None:
    """The cached workspace as a load of `root` would find it (None: that load would miss)."""
    return cache.read(root.resolve(), cache.key(root.resolve(), None, None))


@pytest.fixture
def ws(make_workspace: MakeWorkspace) -> Dir:
    w = make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": ECHO_HANDLERS,
            "inbox/a.txt": "hello world\n",
        }
    )
    (w.root / ".eventrunner").mkdir()
    _settled(w.root)
    load_workspace(w.root, cached=True)
    assert _cached(w.root) is not None  # the baseline: cached, and found again
    return w


def _edit_toml(w: Dir) -> None:
    w.write("eventrunner.toml", "[runtime]\nconcurrency = 7\n")


def _create_toml(w: Dir) -> None:
    w.delete("eventrunner.toml")
    _settled(w.root)
    load_workspace(w.root, cached=True)
    assert _cached(w.root) is not None
    w.write("eventrunner.toml", "[runtime]\nconcurrency = 7\n")


def _edit_pipeline(w: Dir) -> None:
    w.write("pipelines/echo.toml", ECHO_PIPELINE.replace('suffix = "!"', 'suffix = "?"'))


def _add_pipeline(w: Dir) -> None:
    w.write(
        "pipelines/more.toml",
        '[stages.copy]\nhandler = "echo:count"\ninputs = { text = "inbox/{name}.txt" }\n'
        'output = "copies/{name}.json"\n',
    )


def _edit_handler(w: Dir) -> None:
    w.write("handlers/echo.py", ECHO_HANDLERS.replace("upper()", "lower()"))


def _edit_helper_in_a_subpackage(w: Dir) -> None:
    w.write("handlers/lib/__init__.py", "")
    _settled(w.root)
    load_workspace(w.root, cached=True)
    assert _cached(w.root) is not None
    w.write("handlers/lib/__init__.py", "X = 1\n")


def _edit_keeping_size_and_mtime(w: Dir) -> None:
    path = w.path("pipelines/echo.toml")
    before = path.stat()
    path.write_text(ECHO_PIPELINE.replace('suffix = "!"', 'suffix = "?"'), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `cp -p`, rsync -t do
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


EDITS: dict[str, Callable[[Dir], None]] = {
    "eventrunner.toml edited": _edit_toml,
    "eventrunner.toml created": _create_toml,
    "pipeline file edited": _edit_pipeline,
    "pipeline file added": _add_pipeline,
    "handler module edited": _edit_handler,
    "helper in a handler subpackage edited": _edit_helper_in_a_subpackage,
    "pipeline edited with its size and mtime kept": _edit_keeping_size_and_mtime,
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_an_edit_of_any_definition_file_is_never_answered_from_the_cache(
    ws: Dir, edit: str
) -> None:
    EDITS[edit](ws)
    assert _cached(ws.root) is None
    got = load_workspace(ws.root, cached=True)
    fresh = load_workspace(ws.root)
    assert got.settings == fresh.settings
    assert got.code == fresh.code and got.params == fresh.params and got.modules == fresh.modules
    assert sorted(got.graph.stages) == sorted(fresh.graph.stages)


def test_a_deleted_pipeline_file_is_never_answered_from_the_cache(ws: Dir) -> None:
    _add_pipeline(ws)
    _settled(ws.root)
    assert "more.copy" in load_workspace(ws.root, cached=True).graph.stages
    assert _cached(ws.root) is not None
    ws.delete("pipelines/more.toml")
    assert _cached(ws.root) is None
    assert "more.copy" not in load_workspace(ws.root, cached=True).graph.stages


def test_settings_from_the_environment_and_flags_are_part_of_the_key(
    ws: Dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTRUNNER_RUNTIME_CONCURRENCY", "5")
    assert _cached(ws.root) is None
    assert load_workspace(ws.root, cached=True).settings.runtime.concurrency == 5
    got = load_workspace(ws.root, {"server": {"port": 9123}}, cached=True)
    assert got.settings.server.port == 9123 and got.settings.runtime.concurrency == 5
    assert load_workspace(ws.root, cached=True).settings.server.port == 8700


def test_a_moved_data_root_symlink_is_never_answered_from_the_cache(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    w = make_workspace(
        {
            "eventrunner.toml": 'data_root = "data"\n',
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": ECHO_HANDLERS,
        }
    )
    (w.root / ".eventrunner").mkdir()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (w.root / "data").symlink_to(tmp_path / "one")
    _settled(w.root)
    assert load_workspace(w.root, cached=True).settings.data_root == tmp_path / "one"
    (w.root / "data").unlink()
    (w.root / "data").symlink_to(tmp_path / "two")
    assert _cached(w.root) is None
    assert load_workspace(w.root, cached=True).settings.data_root == tmp_path / "two"


def test_no_cache_is_written_for_a_file_changed_within_the_racy_window(
    ws: Dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "RACY_NS", 3600 * 10**9)  # everything is "just written"
    _edit_pipeline(ws)
    load_workspace(ws.root, cached=True)
    assert not (ws.root / ".eventrunner" / cache.CACHE).exists()
    assert _cached(ws.root) is None


def test_an_invalid_workspace_is_reported_even_after_a_cached_load(ws: Dir) -> None:
    ws.write("pipelines/echo.toml", ECHO_PIPELINE + "\n[stages.bad]\nhandler = 3\n")
    res = ws.cli("run")
    assert res.code == 2 and "pipelines/echo.toml" in res.err


def test_a_torn_cache_is_a_fresh_load(ws: Dir) -> None:
    path = ws.root / ".eventrunner" / cache.CACHE
    path.write_bytes(path.read_bytes()[:50])
    assert _cached(ws.root) is None
    assert load_workspace(ws.root, cached=True).settings.runtime.retry.backoff == 86400.0


def test_a_run_from_a_cached_workspace_imports_no_pydantic(ws: Dir) -> None:
    script = (
        "import sys\n"
        "from eventrunner.cli.main import main\n"
        f"code = main(['-w', {str(ws.root)!r}, 'run', '--json'])\n"
        "print('PYDANTIC', 'pydantic' in sys.modules, code)\n"
    )

    def run() -> str:
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    _edit_handler(ws)
    _settled(ws.root)
    assert run() == "PYDANTIC True 0"  # a miss: this run validates, with pydantic...
    ws.write("inbox/a.txt", "changed input\n")
    assert run() == "PYDANTIC False 0"  # ...and keeps the workspace this one starts from
    assert ws.read("shouted/a.txt") == "changed input!\n"  # the edited handler (lower) ran


def test_loads_with_different_flags_are_kept_side_by_side(ws: Dir) -> None:
    port0 = {"server": {"port": 0}}
    assert load_workspace(ws.root, port0, cached=True).settings.server.port == 0  # serve --port 0
    root = ws.root.resolve()
    assert cache.read(root, cache.key(root, port0, None)) is not None
    assert cache.read(root, cache.key(root, None, None)) is not None  # run's is still there
    assert load_workspace(ws.root, cached=True).settings.server.port == 8700


def test_an_edit_below_a_symlinked_handler_folder_is_never_answered_from_the_cache(
    ws: Dir, tmp_path: Path
) -> None:
    outside = tmp_path / "shared-lib"
    outside.mkdir()
    (outside / "__init__.py").write_text("X = 1\n", encoding="utf-8")
    (ws.root / "handlers" / "lib").symlink_to(outside)
    _settled(ws.root)  # the symlinked folder's files are among the workspace's inputs
    load_workspace(ws.root, cached=True)
    assert _cached(ws.root) is not None
    (outside / "__init__.py").write_text("X = 22\n", encoding="utf-8")
    assert _cached(ws.root) is None
