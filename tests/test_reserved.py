"""The workspace's code and state are never data (issue 14, point 1): validation refuses
patterns that could name them, and intake refuses paths that lead onto them.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import MakeWorkspace

from eventrunner.core.patterns import parse_pattern
from eventrunner.core.reserved import (
    data_root_problem,
    pattern_reason,
    reserved_paths,
    reserved_reason,
)
from eventrunner.server.app import create_app
from eventrunner.server.spool import Spool, SpoolRecord
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
WS = PurePosixPath("/srv/ws")
AT_ROOT = reserved_paths(WS, WS)  # data_root = "." (the default)

HANDLER = "def up(text: str) -> str:\n    return text.upper()\n"


# -- the rule ------------------------------------------------------------------------------------


def test_reserved_paths_follow_the_data_root() -> None:
    assert AT_ROOT == (("pipelines",), ("handlers",), ("eventrunner.toml",), (".eventrunner",))
    assert reserved_paths(WS, WS / "data") == ()  # the workspace is not below the data root
    above = reserved_paths(WS, PurePosixPath("/srv"))
    assert ("ws", "handlers") in above and ("handlers",) not in above


@pytest.mark.parametrize(
    "relpath",
    ["pipelines/evil.toml", "handlers/h.py", "eventrunner.toml", ".eventrunner/lock", "handlers"],
)
def test_paths_onto_the_workspace_code_or_state_are_reserved(relpath: str) -> None:
    assert reserved_reason(relpath, AT_ROOT) is not None


@pytest.mark.parametrize("relpath", ["inbox/pipelines", "pipelines.txt", "data/handlers/h.py"])
def test_other_paths_are_not_reserved(relpath: str) -> None:
    assert reserved_reason(relpath, AT_ROOT) is None


@pytest.mark.parametrize(
    "pattern",
    ["{folder}/{file}", "{name}", "{f:[a-z]+}/{x}.py", "{n}.toml", "{a}/{b}/{c}"],
)
def test_patterns_that_could_name_code_are_reported(pattern: str) -> None:
    assert pattern_reason(parse_pattern(pattern), AT_ROOT) is not None


@pytest.mark.parametrize(
    "pattern",
    ["inbox/{file}", "{name}.txt", "{f:(?!pipelines$|handlers$)[a-z]+}/{x}", "{day:\\d+}/{x}"],
)
def test_patterns_that_cannot_name_code_pass(pattern: str) -> None:
    assert pattern_reason(parse_pattern(pattern), AT_ROOT) is None


def test_a_data_root_inside_the_handlers_folder_is_refused() -> None:
    assert data_root_problem(WS, WS / "handlers/data") is not None
    assert data_root_problem(WS, WS / "data") is None


# -- validation ----------------------------------------------------------------------------------


def test_validation_refuses_a_source_pattern_that_could_name_pipeline_files(
    make_workspace: MakeWorkspace,
) -> None:
    # Given the default data_root "." and patterns whose first segment is a variable
    ws = make_workspace(
        {
            "pipelines/p.toml": """\
                [sources.drop]
                pattern = "{folder}/{file}"
                webhook = { allow_unsigned = true }

                [stages.up]
                handler = "h:up"
                inputs  = { text = "in/{name}.txt" }
                output  = "{name}/h.py"
                """,
            "handlers/h.py": HANDLER,
        }
    )
    # When validating
    res = ws.cli("validate", "--json")
    # Then both are refused, each with its file, field and reason
    assert res.code == 2, res.out
    found: dict[tuple[str, str], str] = {}
    for p in res.json["problems"]:  # a field may have several problems (overlap, reserved)
        key = (p["file"], p["field"])
        found[key] = found.get(key, "") + p["reason"] + "\n"
    assert "pipelines" in found[("pipelines/p.toml", "sources.drop.pattern")]
    assert "handlers" in found[("pipelines/p.toml", "stages.up.output")]


def test_validation_accepts_the_same_patterns_under_a_data_folder(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "eventrunner.toml": 'data_root = "data"\n',
            "pipelines/p.toml": """\
                [sources.drop]
                pattern = "{folder}/{file}"
                webhook = { allow_unsigned = true }
                """,
        }
    )
    assert ws.cli("validate").code == 0


# -- intake --------------------------------------------------------------------------------------

INTAKE = """\
name = "hooks"

[sources.drop]
pattern = "inbox/{file}"
webhook = { allow_unsigned = true }
"""


@pytest.fixture
async def client(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> AsyncIterator[TestClient[Any, Any]]:
    # A workspace with the default data_root "." whose drop folder is a symlink into pipelines/
    ws = tmp_path / "ws"
    (ws / "pipelines").mkdir(parents=True)
    (ws / "pipelines/hooks.toml").write_text(textwrap.dedent(INTAKE))
    (ws / "inbox").symlink_to("pipelines", target_is_directory=True)
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        test_client = await aiohttp_client(create_app(rt))
        try:
            yield test_client
        finally:
            await test_client.close()


EVIL = b'[stages.x]\nhandler = "shell"\noutput = "pwned"\nparams = { command = "touch pwned" }\n'


async def test_webhook_through_a_symlinked_folder_cannot_write_a_pipeline_file(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    # When a delivery names a file whose folder leads into pipelines/
    resp = await client.post("/hooks/hooks/drop", data=EVIL, params={"file": "evil.toml"})
    # Then it is refused before anything is stored, and pipelines/ holds only its own file
    assert resp.status == 400, await resp.text()
    assert "pipeline files" in (await resp.json())["error"]["message"]
    assert sorted(p.name for p in (tmp_path / "ws/pipelines").iterdir()) == ["hooks.toml"]


async def test_spool_never_writes_onto_a_reserved_path(tmp_path: Path) -> None:
    # Given a spool over a workspace root (data_root ".")
    ws = tmp_path / "ws"
    (ws / "handlers").mkdir(parents=True)
    reserved = reserved_paths(ws, ws)
    async with Spool(ws / ".eventrunner/spool", ws, reserved=reserved) as spool:
        # When records reach it that name a handler module and the settings (no intake check)
        await spool.put(SpoolRecord("handlers/h.py", b"import os; os.system('touch pwned')"))
        await spool.put(SpoolRecord("eventrunner.toml", b"data_root = '/'"))
        await spool.put(SpoolRecord("fine/ok.txt", b"ok"))
    # Then neither is written, and the ordinary one is
    assert not (ws / "handlers/h.py").exists()
    assert not (ws / "eventrunner.toml").exists()
    assert (ws / "fine/ok.txt").read_bytes() == b"ok"
    assert spool.stats["refused"] == 2
