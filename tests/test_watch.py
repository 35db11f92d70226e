"""Real watchfiles events in a temp folder, with short debounce and settle times."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import watchfiles

from eventrunner.service import watch as watch_module
from eventrunner.service.watch import FileChange, Rescan, is_ignored, watch_changes

DEADLINE = 10.0


class Watching:
    """Runs watch_changes in a task and lets a test wait for a condition on what arrived."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = root
        self.options: dict[str, Any] = {"debounce": 0.02, "settle": 0.1, **options}
        self.items: list[list[FileChange] | Rescan] = []
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.sizes: dict[str, int] = {}  # file size seen when each change was reported
        self._arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watching:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), DEADLINE)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, DEADLINE)

    async def _run(self) -> None:
        async for item in watch_changes(
            self.root, stop_event=self.stop, ready=self.ready, **self.options
        ):
            if not isinstance(item, Rescan):
                for change in item:
                    path = self.root / change.relpath
                    self.sizes[change.relpath] = path.stat().st_size if path.exists() else -1
            self.items.append(item)
            self._arrived.set()

    @property
    def changes(self) -> list[FileChange]:
        return [c for item in self.items if not isinstance(item, Rescan) for c in item]

    def kinds(self, relpath: str) -> list[str]:
        return [c.kind for c in self.changes if c.relpath == relpath]

    async def until(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

    async def until_reported(self, relpath: str, kind: str) -> None:
        await self.until(lambda: kind in self.kinds(relpath))


def test_ignored_paths_are_eventrunner_state_and_temp_files() -> None:
    for ignored in [
        ".eventrunner/x.json",
        "data/.eventrunner/locks/a",
        ".eventrunner",
        "a/.er-tmp-123",
        "x.tmp",
        "notes.txt.swp",
        ".notes.txt.swx",
        "a/b~",
        ".#lock",
        "#autosave#",
        "big.iso.part",
        "video.crdownload",
        "dir/4913",
    ]:
        assert is_ignored(ignored), ignored
    for kept in ["a.json", "data/x.csv", "eventrunner/x", "tmp/a", "#", "49130", "a.tmpl"]:
        assert not is_ignored(kept), kept


async def test_write_modify_delete_are_reported_in_order(tmp_path: Path) -> None:
    async with Watching(tmp_path) as w:
        (tmp_path / "a.txt").write_text("one")
        await w.until_reported("a.txt", "added")
        (tmp_path / "a.txt").write_text("two, longer")
        await w.until_reported("a.txt", "modified")
        (tmp_path / "a.txt").unlink()
        await w.until_reported("a.txt", "deleted")
    assert w.kinds("a.txt") == ["added", "modified", "deleted"]


async def test_files_in_subdirectories_are_reported_with_slash_paths(tmp_path: Path) -> None:
    async with Watching(tmp_path) as w:
        (tmp_path / "in" / "deep").mkdir(parents=True)
        (tmp_path / "in" / "deep" / "f.json").write_text("{}")
        await w.until_reported("in/deep/f.json", "added")
    assert {c.relpath for c in w.changes} == {"in/deep/f.json"}  # directories are not reported


async def test_state_and_editor_temp_files_are_ignored(tmp_path: Path) -> None:
    async with Watching(tmp_path) as w:
        # Given ignored files written first
        (tmp_path / ".eventrunner").mkdir()
        (tmp_path / ".eventrunner" / "x.json").write_text("{}")
        for name in ["a.swp", ".#a", "#a#", "a~", "a.part", "4913", ".er-tmp-a"]:
            (tmp_path / name).write_text("junk")
        # When a real file is written after them
        (tmp_path / "real.txt").write_text("data")
        await w.until_reported("real.txt", "added")
    # Then only the real file arrived
    assert [c.relpath for c in w.changes] == ["real.txt"]


@pytest.mark.parametrize("temp_name", [".er-tmp-x.json", "x.json.tmp"])
async def test_atomic_rename_surfaces_only_the_final_name(tmp_path: Path, temp_name: str) -> None:
    (tmp_path / "x.json").write_text("old")
    async with Watching(tmp_path) as w:
        (tmp_path / temp_name).write_text('{"new": true}')
        os.replace(tmp_path / temp_name, tmp_path / "x.json")
        await w.until(lambda: bool(w.kinds("x.json")))
    assert {c.relpath for c in w.changes} == {"x.json"}
    assert w.kinds("x.json")[0] in ("added", "modified")


async def test_file_written_in_two_parts_is_reported_once_when_complete(tmp_path: Path) -> None:
    # The pause is long enough for the first part's event to arrive (watchfiles polls its event
    # buffer every 50 ms) and shorter than the settle time.
    async with Watching(tmp_path, debounce=0.02, settle=0.4) as w:
        # Given a writer that pauses longer than the debounce but shorter than the settle time
        with open(tmp_path / "slow.bin", "wb") as f:
            f.write(b"a" * 1000)
            f.flush()
            await asyncio.sleep(0.2)
            f.write(b"b" * 1000)
        # Then it is reported complete
        await w.until(lambda: bool(w.kinds("slow.bin")))
        assert w.sizes["slow.bin"] == 2000
        # And only once: a later file arrives with no second report of it in between
        (tmp_path / "later.txt").write_text("x")
        await w.until_reported("later.txt", "added")
    assert w.kinds("slow.bin") == ["added"]


async def test_one_busy_file_does_not_hold_back_others(tmp_path: Path) -> None:
    async with Watching(tmp_path, settle=0.3) as w:
        busy = open(tmp_path / "busy.log", "wb")  # noqa: SIM115 - written across awaits below
        try:
            busy.write(b"start\n")
            busy.flush()
            (tmp_path / "quiet.txt").write_text("done")
            # The busy file keeps growing well past its settle time while the quiet one settles
            loop = asyncio.get_running_loop()
            keep_writing_until = loop.time() + DEADLINE
            while not w.kinds("quiet.txt") and loop.time() < keep_writing_until:
                busy.write(b"more\n")
                busy.flush()
                await asyncio.sleep(0.05)
            assert w.kinds("quiet.txt") == ["added"]
            assert not w.kinds("busy.log")
        finally:
            busy.close()
        await w.until_reported("busy.log", "added")


async def test_burst_of_500_files_is_all_reported(tmp_path: Path) -> None:
    names = {f"burst/f{i:03}.txt" for i in range(500)}
    (tmp_path / "burst").mkdir()
    async with Watching(tmp_path) as w:
        for name in sorted(names):
            (tmp_path / name).write_text(name)
        await w.until(lambda: names <= {c.relpath for c in w.changes})
    # Each file is first reported as added. On a loaded machine the create and the write of
    # one file can fall into two settle windows, so a later "modified" for it is allowed.
    first: dict[str, str] = {}
    for c in w.changes:
        first.setdefault(c.relpath, c.kind)
    assert set(first.values()) == {"added"}


async def test_directory_moved_in_reports_its_files(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "batch" / "sub").mkdir(parents=True)
    (outside / "batch" / "a.txt").write_text("a")
    (outside / "batch" / "sub" / "b.txt").write_text("b")
    root = tmp_path / "root"
    root.mkdir()
    async with Watching(root) as w:
        os.rename(outside / "batch", root / "batch")
        await w.until(lambda: {"batch/a.txt", "batch/sub/b.txt"} <= {c.relpath for c in w.changes})


async def test_force_polling_reports_changes(tmp_path: Path) -> None:
    async with Watching(tmp_path, force_polling=True, poll_delay=0.05) as w:
        (tmp_path / "polled.txt").write_text("x")
        await w.until_reported("polled.txt", "added")
        (tmp_path / "polled.txt").unlink()
        await w.until_reported("polled.txt", "deleted")


async def test_stop_event_ends_the_iterator(tmp_path: Path) -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()
    seen: list[object] = []

    async def consume() -> None:
        async for item in watch_changes(tmp_path, stop_event=stop, ready=ready):
            seen.append(item)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(ready.wait(), DEADLINE)
    stop.set()
    await asyncio.wait_for(task, DEADLINE)
    assert seen == []


async def test_cancelling_the_consumer_reraises_and_leaves_the_stop_event_alone(
    tmp_path: Path,
) -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def consume() -> None:
        async for _ in watch_changes(tmp_path, stop_event=stop, ready=ready):
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(ready.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE)
    assert not stop.is_set()


def _fake_awatch_failing(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[int, dict[str, Any]], Exception | None]
) -> list[dict[str, Any]]:
    """FAKE failure only (inotify limits and watcher crashes cannot be provoked here): wraps the
    real awatch, raising fail(call_number, kwargs) when that returns an exception."""
    calls: list[dict[str, Any]] = []
    real_awatch = watchfiles.awatch

    async def awatch(*paths: Any, **kwargs: Any) -> AsyncIterator[set[tuple[Any, str]]]:
        calls.append(kwargs)
        error = fail(len(calls), kwargs)
        if error is not None:
            raise error
        async for changes in real_awatch(*paths, **kwargs):
            yield changes

    monkeypatch.setattr(watch_module, "awatch", awatch)
    return calls


async def test_inotify_limit_at_start_falls_back_to_polling_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(n: int, kwargs: dict[str, Any]) -> Exception | None:
        if kwargs["force_polling"]:
            return None
        return OSError("OS file watch limit reached. (Error { kind: MaxFilesWatch })")

    calls = _fake_awatch_failing(monkeypatch, fail)
    with caplog.at_level(logging.WARNING, logger="eventrunner.watch"):
        async with Watching(tmp_path, poll_delay=0.05) as w:
            (tmp_path / "a.txt").write_text("x")
            await w.until_reported("a.txt", "added")
    assert [c["force_polling"] for c in calls] == [None, True]
    assert "fs.inotify.max_user_watches" in caplog.text
    assert not any(isinstance(item, Rescan) for item in w.items)  # nothing was lost yet


async def test_watcher_restart_after_error_yields_one_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_awatch = watchfiles.awatch
    calls = 0

    async def awatch(*paths: Any, **kwargs: Any) -> AsyncIterator[set[tuple[Any, str]]]:
        # FAKE crash: the first watcher dies after its first batch; the second fails to start.
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("watcher failed to start")
        async for changes in real_awatch(*paths, **kwargs):
            yield changes
            if calls == 1 and changes:
                raise RuntimeError("error in underlying watcher: queue overflow")

    monkeypatch.setattr(watch_module, "awatch", awatch)
    with caplog.at_level(logging.ERROR, logger="eventrunner.watch"):
        async with Watching(tmp_path) as w:
            (tmp_path / "first.txt").write_text("x")
            await w.until(lambda: any(isinstance(i, Rescan) for i in w.items))
            (tmp_path / "second.txt").write_text("y")
            await w.until_reported("second.txt", "added")
    rescans = [i for i in w.items if isinstance(i, Rescan)]
    assert len(rescans) == 1
    assert "queue overflow" in rescans[0].reason or "failed to start" in rescans[0].reason
    assert "queue overflow" in caplog.text
    assert calls == 3
