"""Writes below the data root that never leave it, whatever symlinks appear (issue 14, point 2).

Real symlinks in tmp_path, swapped in between a check and a write, during a delivery, and
concurrently with writes from another thread.
"""

from __future__ import annotations

import ctypes
import os
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from eventrunner.core.errors import PatternError
from eventrunner.server.app import create_app
from eventrunner.server.spool import Spool, SpoolRecord
from eventrunner.service.runtime import Runtime
from eventrunner.state.contain import DataRoot, resolve_inside
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


def outside(root: Path) -> list[str]:
    return sorted(os.listdir(root.parent / "outside"))


def swap_for_link(folder: Path, target: Path) -> None:
    """Replace `folder` by a symlink to `target` (the old folder moved aside)."""
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(target, target_is_directory=True)


# -- DataRoot ----------------------------------------------------------------------------------


def test_write_creates_folders_and_returns_the_path_written(root: Path) -> None:
    assert DataRoot(root).write("a/b/c.txt", b"x") == "a/b/c.txt"
    assert (root / "a/b/c.txt").read_bytes() == b"x"
    assert [p.name for p in (root / "a/b").iterdir()] == ["c.txt"]  # no temp left


def test_write_follows_a_symlink_that_stays_inside(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to("real", target_is_directory=True)
    (root / "absolute").symlink_to(root / "real", target_is_directory=True)
    assert DataRoot(root).write("alias/a.md", b"1") == "real/a.md"
    assert DataRoot(root).write("absolute/b.md", b"2") == "real/b.md"
    assert sorted(os.listdir(root / "real")) == ["a.md", "b.md"]


@pytest.mark.parametrize(
    "link", ["../outside", "ABSOLUTE", "../root/../outside", "x/../../outside"]
)
def test_write_refuses_a_symlink_that_leads_outside(root: Path, link: str) -> None:
    (root / "x").mkdir()
    target = str(root.parent / "outside") if link == "ABSOLUTE" else link
    (root / "escape").symlink_to(target, target_is_directory=True)
    for relpath in ("escape/new.txt", "escape/deeper/new.txt"):
        with pytest.raises(PatternError, match="outside"):
            DataRoot(root).write(relpath, b"no")
        with pytest.raises(PatternError, match="outside"):
            DataRoot(root).check(relpath)
    assert outside(root) == []


def test_a_symlink_loop_is_refused(root: Path) -> None:
    (root / "a").symlink_to("b", target_is_directory=True)
    (root / "b").symlink_to("a", target_is_directory=True)
    with pytest.raises(PatternError, match="too many symlinks"):
        DataRoot(root).write("a/x.txt", b"")


def test_a_symlink_onto_a_reserved_folder_is_refused(root: Path) -> None:
    (root / "handlers").mkdir()
    (root / "inbox").symlink_to("handlers", target_is_directory=True)
    data = DataRoot(root, reserved=(("handlers",),))
    with pytest.raises(PatternError, match="handler modules"):
        data.write("inbox/evil.py", b"import os")
    assert os.listdir(root / "handlers") == []


def test_a_folder_swapped_for_a_symlink_after_the_check_cannot_redirect_the_write(
    root: Path,
) -> None:
    # Given a path that checks fine
    (root / "inbox").mkdir()
    data = DataRoot(root)
    assert data.check("inbox/a.json") == "inbox/a.json"
    # When its folder is replaced by a symlink to outside before the write
    swap_for_link(root / "inbox", root.parent / "outside")
    # Then the write refuses, and nothing lands outside
    with pytest.raises(PatternError, match="outside"):
        data.write("inbox/a.json", b"{}")
    assert outside(root) == []


def test_racing_folder_swaps_never_let_a_write_escape(root: Path) -> None:
    # Given a thread that keeps exchanging inbox/ with a symlink to outside (atomically: the
    # name always exists, as a folder or as the link)
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("renameat2 (RENAME_EXCHANGE) is not available in this libc")
    (root / "inbox").mkdir()
    (root / "link").symlink_to(root.parent / "outside", target_is_directory=True)
    names = [os.fsencode(root / "inbox"), os.fsencode(root / "link")]
    stop, swaps = threading.Event(), [0]

    def swapper() -> None:
        while not stop.is_set():
            if libc.renameat2(_AT_FDCWD, names[0], _AT_FDCWD, names[1], _RENAME_EXCHANGE) != 0:
                raise OSError(ctypes.get_errno(), "renameat2")
            swaps[0] += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    # When writes go on meanwhile
    data, written = DataRoot(root), 0
    try:
        for i in range(2000):
            try:
                data.write(f"inbox/{i}.txt", b"x")
                written += 1
            except PatternError:
                pass
    finally:
        stop.set()
        thread.join()
    # Then writes went through while it was a folder, and none of them left the root
    assert swaps[0] > 100 and written > 0
    assert outside(root) == []


# -- intake ------------------------------------------------------------------------------------

PIPELINE = """\
name = "hooks"

[sources.drop]
pattern = "inbox/{item}.json"
webhook = { allow_unsigned = true }
"""


@pytest.fixture
async def client(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> AsyncIterator[TestClient[Any, Any]]:
    ws = tmp_path / "ws"
    (ws / "pipelines").mkdir(parents=True)
    (ws / "pipelines/hooks.toml").write_text(textwrap.dedent(PIPELINE))
    (ws / "eventrunner.toml").write_text('data_root = "data"\n')
    (tmp_path / "outside").mkdir()
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        test_client = await aiohttp_client(create_app(rt))
        try:
            yield test_client
        finally:
            await test_client.close()


async def test_delivery_right_after_a_folder_became_a_symlink_does_not_write_outside(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    # Given a good delivery into data/inbox/
    resp = await client.post("/hooks/hooks/drop", data=b"{}", params={"item": "a"})
    assert resp.status == 202
    data = tmp_path / "ws/data"
    await _until(lambda: (data / "inbox/a.json").exists())
    # When the folder is replaced by a symlink to outside right after it
    swap_for_link(data / "inbox", tmp_path / "outside")
    resp = await client.post("/hooks/hooks/drop", data=b'{"n": 2}', params={"item": "b"})
    # Then the next delivery is refused, and nothing was written outside
    assert resp.status == 400, await resp.text()
    assert os.listdir(tmp_path / "outside") == []


async def test_spool_refuses_a_record_whose_folder_is_now_a_symlink_out(tmp_path: Path) -> None:
    # Given a data root whose inbox/ already leads outside (no intake check in between)
    data, away = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    away.mkdir()
    (data / "inbox").symlink_to(away, target_is_directory=True)
    async with Spool(tmp_path / "spool", data) as spool:
        await spool.put(SpoolRecord("inbox/x.json", b"{}"))
    # Then the acknowledged record is refused rather than written through the link
    assert os.listdir(away) == []
    assert spool.stats["refused"] == 1


# -- resolve_inside (a check, for paths eventrunner formats itself) ------------------------------


def test_resolve_inside_joins_root_and_relpath(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "logs/2026-11-25.md") == tmp_path / "logs" / "2026-11-25.md"
    assert resolve_inside(tmp_path, "new/folder/file") == tmp_path / "new/folder/file"


@pytest.mark.parametrize(
    ("relpath", "reason"),
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("", "root itself"),
        (".", "root itself"),
    ],
)
def test_resolve_inside_refuses_paths_that_leave_the_root(
    tmp_path: Path, relpath: str, reason: str
) -> None:
    with pytest.raises(PatternError) as caught:
        resolve_inside(tmp_path, relpath)
    assert reason in str(caught.value)


def test_resolve_inside_refuses_a_symlink_that_escapes_the_root(tmp_path: Path) -> None:
    # Given a root holding a folder symlink and a file symlink that both point outside it
    root, away = tmp_path / "root", tmp_path / "outside"
    away.mkdir()
    (away / "secret.txt").write_text("s")
    root.mkdir()
    (root / "escape").symlink_to(away, target_is_directory=True)
    (root / "file.txt").symlink_to(away / "secret.txt")
    # When / Then: every path through them is refused
    for relpath in ["escape/secret.txt", "escape/new.txt", "escape", "file.txt"]:
        with pytest.raises(PatternError, match="outside"):
            resolve_inside(root, relpath)


def test_resolve_inside_allows_a_symlink_that_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real/a.md").write_text("a")
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert resolve_inside(tmp_path, "alias/a.md") == tmp_path / "alias" / "a.md"


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)
