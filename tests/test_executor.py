"""Running one handler: inputs by annotation, ctx, return values, folders, async, timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import MakeWorkspace, Workspace

FORMS_PIPELINE = """\
name = "forms"

[stages.forms]
handler = "h:forms"
inputs  = { s = "in/{id}/s.txt", b = "in/{id}/b.bin", p = "in/{id}/p.txt", d = "in/{id}/d.json", l = "in/{id}/l.json", m = "in/{id}/m.json" }
output  = "out/{id}.json"
params  = { k = 1, name = "x" }

[stages.gather_models]
handler = "h:gather_models"
inputs  = { ms = "in/{id}/m.json" }
output  = "models.json"

[stages.gather_raw]
handler = "h:gather_raw"
inputs  = { bs = "in/{id}/b.bin", ps = "in/{id}/p.txt" }
output  = "raw.json"
"""

FORMS_HANDLERS = """\
from pathlib import Path

from pydantic import BaseModel


class Item(BaseModel):
    name: str
    qty: int


def forms(ctx, s: str, b: bytes, p: Path, d: dict, l: list, m: Item) -> dict:
    return {
        "s": [type(s).__name__, s],
        "b": [type(b).__name__, b.hex()],
        "p": [isinstance(p, Path), p.is_absolute(), p.name, p.read_text()],
        "d": [type(d).__name__, d],
        "l": [type(l).__name__, l],
        "m": [type(m).__name__, m.name, m.qty],
    }


def gather_models(ms: dict[str, Item]) -> dict:
    return {k: [type(v).__name__, v.qty] for k, v in ms.items()}


def gather_raw(bs: dict[str, bytes], ps: dict[str, Path]) -> dict:
    return {
        "bs": {k: [type(v).__name__, v.hex()] for k, v in bs.items()},
        "ps": {k: [isinstance(v, Path), v.name] for k, v in ps.items()},
    }
"""


def _forms_files() -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        "pipelines/forms.toml": FORMS_PIPELINE,
        "handlers/h.py": FORMS_HANDLERS,
    }
    for i, qty in (("one", 1), ("two", 2)):
        files[f"in/{i}/s.txt"] = f"text {i}\n"
        files[f"in/{i}/b.bin"] = bytes([0, 255, qty])
        files[f"in/{i}/p.txt"] = f"path {i}"
        files[f"in/{i}/d.json"] = json.dumps({"key": i})
        files[f"in/{i}/l.json"] = json.dumps([i, qty])
        files[f"in/{i}/m.json"] = json.dumps({"name": i, "qty": qty})
    return files


@pytest.mark.parametrize("future", [False, True], ids=["annotations", "string-annotations"])
def test_inputs_arrive_in_the_form_their_annotation_asks_for(
    make_workspace: MakeWorkspace, future: bool
) -> None:
    files = _forms_files()
    if future:
        files["handlers/h.py"] = "from __future__ import annotations\n\n" + FORMS_HANDLERS
    ws = make_workspace(files)

    ws.run()

    assert json.loads(ws.read("out/two.json")) == {
        "s": ["str", "text two\n"],
        "b": ["bytes", "00ff02"],
        "p": [True, True, "p.txt", "path two"],
        "d": ["dict", {"key": "two"}],
        "l": ["list", ["two", 2]],
        "m": ["Item", "two", 2],
    }


def test_fan_in_inputs_arrive_as_dicts_keyed_by_entity_id_in_the_annotated_form(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(_forms_files())

    ws.run()

    assert json.loads(ws.read("models.json")) == {"one": ["Item", 1], "two": ["Item", 2]}
    assert json.loads(ws.read("raw.json")) == {
        "bs": {"one": ["bytes", "00ff01"], "two": ["bytes", "00ff02"]},
        "ps": {"one": [True, "p.txt"], "two": [True, "p.txt"]},
    }


def test_invalid_json_for_a_model_input_fails_that_state_as_dead(
    make_workspace: MakeWorkspace,
) -> None:
    files = _forms_files()
    files["in/two/m.json"] = json.dumps({"name": "two", "qty": "many"})
    ws = make_workspace(files)

    ws.run(expect=1)

    row = ws.explain("two", "forms")
    assert row["state"] == "dead"
    assert "m.json" in row["failure"]["error"]
    assert ws.states()[("forms.forms", "one")] == "fresh"


CTX_PIPELINE = """\
name = "ctxp"

[stages.show]
handler = "h:show"
inputs  = { t = "in/{a}/{b}.txt" }
output  = "out/{a}/{b}.json"
params  = { n = 3, tag = "t" }
"""

CTX_HANDLERS = """\
def show(ctx, t: str) -> dict:
    return {
        "entity": ctx.entity,
        "entity_id": ctx.entity_id,
        "params": ctx.params,
        "attempt": ctx.attempt,
        "stage": ctx.stage,
        "pipeline": ctx.pipeline,
    }
"""


def test_ctx_carries_entity_id_params_and_attempt(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {"pipelines/ctxp.toml": CTX_PIPELINE, "handlers/h.py": CTX_HANDLERS, "in/x/y,z.txt": "t"}
    )

    ws.run()

    assert json.loads(ws.read("out/x/y,z.json")) == {
        "entity": {"a": "x", "b": "y,z"},
        "entity_id": "a=x,b=y%2Cz",
        "params": {"n": 3, "tag": "t"},
        "attempt": 1,
        "stage": "show",
        "pipeline": "ctxp",
    }


def test_ctx_attempt_counts_retries(make_workspace: MakeWorkspace) -> None:
    pipeline = CTX_PIPELINE + 'retry = { max_attempts = 3, backoff = "0s" }\n'
    handlers = CTX_HANDLERS.replace(
        "def show(ctx, t: str) -> dict:\n",
        'def show(ctx, t: str) -> dict:\n    if ctx.attempt == 1:\n        raise RuntimeError("first try fails")\n',
    )
    ws = make_workspace(
        {"pipelines/ctxp.toml": pipeline, "handlers/h.py": handlers, "in/x/y.txt": "t"}
    )

    ws.run(expect=1)
    ws.run()

    assert json.loads(ws.read("out/x/y.json"))["attempt"] == 2


OUTPUTS_PIPELINE = """\
name = "outs"

[stages.by_path]
handler = "h:by_path"
inputs  = { t = "in/{n}.txt" }
output  = "written/{n}.txt"

[stages.folder]
handler = "h:folder"
inputs  = { t = "in/{n}.txt" }
output  = "folders/{n}"

[stages.listing]
handler = "h:listing"
inputs  = { d = "folders/{n}" }
output  = "listings/{n}.txt"

[stages.raw]
handler = "h:raw"
inputs  = { t = "in/{n}.txt" }
output  = "raw/{n}.bin"

[stages.model]
handler = "h:model"
inputs  = { t = "in/{n}.txt" }
output  = "model/{n}.json"

[stages.rows]
handler = "h:rows"
inputs  = { t = "in/{n}.txt" }
output  = "rows/{n}.json"
"""

OUTPUTS_HANDLERS = """\
from pathlib import Path

from pydantic import BaseModel


class Out(BaseModel):
    words: int


def by_path(ctx, t: str) -> None:
    ctx.output_path.write_text("by path: " + t)


def folder(ctx, t: str) -> None:
    ctx.output_path.mkdir()
    for i, word in enumerate(t.split()):
        (ctx.output_path / f"{i}-{word}.txt").write_text(word)


def listing(d: Path) -> str:
    return "\\n".join(sorted(p.name for p in d.iterdir())) + "\\n"


def raw(t: str) -> bytes:
    return t.encode() + b"\\x00"


def model(t: str) -> Out:
    return Out(words=len(t.split()))


def rows(t: str) -> list:
    return t.split()
"""


@pytest.fixture
def outs(make_workspace: MakeWorkspace) -> Workspace:
    return make_workspace(
        {
            "pipelines/outs.toml": OUTPUTS_PIPELINE,
            "handlers/h.py": OUTPUTS_HANDLERS,
            "in/a.txt": "red green",
        }
    )


def test_handler_returning_none_after_writing_ctx_output_path_commits_that_file(
    outs: Workspace,
) -> None:
    outs.run()

    assert outs.read("written/a.txt") == "by path: red green"
    assert outs.states()[("outs.by_path", "a")] == "fresh"
    assert outs.run()["executed"] == 0


def test_folder_output_written_to_ctx_output_path_feeds_a_path_input(outs: Workspace) -> None:
    outs.run()

    assert sorted(p.name for p in outs.path("folders/a").iterdir()) == ["0-red.txt", "1-green.txt"]
    assert outs.read("listings/a.txt") == "0-red.txt\n1-green.txt\n"


def test_folder_output_is_replaced_whole_when_rerun(outs: Workspace) -> None:
    # Given a folder output
    outs.run()

    # When the input changes
    outs.write("in/a.txt", "blue")
    outs.run()

    # Then the folder holds only the new files, and downstream followed
    assert sorted(p.name for p in outs.path("folders/a").iterdir()) == ["0-blue.txt"]
    assert outs.read("listings/a.txt") == "0-blue.txt\n"


def test_file_edited_inside_a_folder_output_makes_it_output_modified(outs: Workspace) -> None:
    outs.run()

    outs.write("folders/a/0-red.txt", "crimson")

    assert "OUTPUT_MODIFIED" in outs.reasons("a", "folder")


def test_return_values_are_stored_by_type(outs: Workspace) -> None:
    outs.run()

    assert outs.path("raw/a.bin").read_bytes() == b"red green\x00"
    assert json.loads(outs.read("model/a.json")) == {"words": 2}
    assert json.loads(outs.read("rows/a.json")) == ["red", "green"]


def _temps(ws: Workspace) -> list[str]:
    return sorted(p.name for p in ws.root.rglob(".er-tmp-*"))


def test_handler_that_writes_ctx_output_path_and_returns_a_value_leaves_no_temp_file(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": OUTPUTS_PIPELINE.split("[stages.folder]")[0],
            "handlers/h.py": "def by_path(ctx, t: str) -> str:\n    ctx.output_path.write_text('draft')\n    return 'final'\n",
            "in/a.txt": "x",
        }
    )

    ws.run()

    assert ws.read("written/a.txt") == "final"
    assert _temps(ws) == []


def test_failed_async_handler_leaves_no_temp_file(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": OUTPUTS_PIPELINE.split("[stages.folder]")[0],
            "handlers/h.py": (
                "async def by_path(ctx, t: str) -> None:\n"
                "    ctx.output_path.write_text('partial')\n"
                "    raise RuntimeError('half way')\n"
            ),
            "in/a.txt": "x",
        }
    )

    ws.run(expect=1)

    assert _temps(ws) == []


def test_failed_sync_handler_leaves_no_temp_file(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": OUTPUTS_PIPELINE.split("[stages.folder]")[0],
            "handlers/h.py": (
                "def by_path(ctx, t: str) -> None:\n"
                "    ctx.output_path.write_text('partial')\n"
                "    raise RuntimeError('half way')\n"
            ),
            "in/a.txt": "x",
        }
    )

    ws.run(expect=1)

    assert _temps(ws) == []
    assert not ws.exists("written/a.txt")


def test_secrets_come_from_the_environment_and_are_not_stored(
    make_workspace: MakeWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler that needs a secret that is not set
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "handlers/h.py": "def s(ctx, t: str) -> str:\n    return str(len(ctx.secret('ER_TEST_TOKEN')))\n",
            "in/a.txt": "x",
        }
    )
    monkeypatch.delenv("ER_TEST_TOKEN", raising=False)

    # Then the state is dead with a message naming the secret
    report = ws.run(expect=1)
    assert "ER_TEST_TOKEN" in report["failures"][0]["error"]
    assert ws.states()[("p.s", "a")] == "dead"

    # When the secret is set and the state retried, it runs; the secret is stored nowhere
    monkeypatch.setenv("ER_TEST_TOKEN", "s3cr3t-value")
    assert ws.cli("retry").code == 0
    assert ws.run()["succeeded"] == 1
    assert ws.read("out/a.txt") == "12"
    for path in ws.path(".eventrunner").rglob("*"):
        if path.is_file():
            assert b"s3cr3t-value" not in path.read_bytes(), path


def test_handler_returning_none_without_writing_fails(make_workspace: MakeWorkspace) -> None:
    pipeline = OUTPUTS_PIPELINE.split("[stages.folder]")[0]
    ws = make_workspace(
        {
            "pipelines/outs.toml": pipeline,
            "handlers/h.py": "def by_path(ctx, t: str) -> None:\n    pass\n",
            "in/a.txt": "x",
        }
    )

    report = ws.run(expect=1)

    assert "wrote nothing" in report["failures"][0]["error"]
    assert not ws.exists("written/a.txt")


def test_fan_out_stage_returning_a_non_mapping_fails(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { f = "feeds/{f}.txt" }\noutput = "items/{f}/{i}.txt"\n',
            "handlers/h.py": "def s(f: str) -> str:\n    return f\n",
            "feeds/one.txt": "x",
        }
    )

    report = ws.run(expect=1)

    assert "mapping" in report["failures"][0]["error"]


def test_async_handler_runs(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "handlers/h.py": (
                "import asyncio\n\n\nasync def s(ctx, t: str) -> str:\n"
                "    await asyncio.sleep(0)\n    return ctx.entity_id + ':' + t\n"
            ),
            "in/a.txt": "x",
            "in/b.txt": "y",
        }
    )

    assert ws.run()["succeeded"] == 2
    assert ws.read("out/b.txt") == "b:y"


def test_async_handler_over_its_timeout_fails_with_a_timeout_message(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": (
                '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n'
                'timeout = "100ms"\n'
            ),
            "handlers/h.py": (
                "import asyncio\n\n\nasync def s(t: str) -> str:\n    await asyncio.sleep(600)\n    return t\n"
            ),
            "in/a.txt": "x",
        }
    )

    report = ws.run(expect=1)

    assert report["failed"] == 1
    assert "timed out" in report["failures"][0]["error"]
    assert ws.states()[("p.s", "a")] == "failed"


# A sync handler that blocks until the test creates `release` (bounded, so nothing hangs forever).
BLOCKING_HANDLER = """\
import time


def s(ctx, t: str) -> str:
    deadline = time.monotonic() + 60
    while not (ctx.data_root / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return t
"""

TIMEOUT_PIPELINE = '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\ntimeout = "200ms"\n'


def test_sync_handler_over_its_timeout_fails_with_a_timeout_message(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {"pipelines/p.toml": TIMEOUT_PIPELINE, "handlers/h.py": BLOCKING_HANDLER, "in/a.txt": "x"}
    )
    try:
        report = ws.run(expect=1)
        assert "timed out" in report["failures"][0]["error"]
        assert "timed out" in ws.explain("a", "s")["failure"]["error"]
    finally:
        ws.write("release", "")


def test_run_process_exits_although_a_timed_out_sync_handler_still_blocks(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {"pipelines/p.toml": TIMEOUT_PIPELINE, "handlers/h.py": BLOCKING_HANDLER, "in/a.txt": "x"}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrunner.cli", "-w", str(ws.root), "run", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # A generous deadline: the run itself needs well under a second.
        proc.wait(timeout=4)
        assert proc.returncode == 1
    except subprocess.TimeoutExpired:
        pytest.fail("eventrunner run still running while the timed-out handler blocks")
    finally:
        ws.write("release", "")
        proc.communicate(timeout=60)


def test_handler_module_named_like_a_stdlib_module_does_not_shadow_it(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "json:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.json"\n',
            "handlers/json.py": "import json as std\n\n\ndef s(t: str) -> str:\n    return std.dumps({'t': t})\n",
            "in/a.txt": "x",
        }
    )

    assert ws.run()["succeeded"] == 1
    assert json.loads(ws.read("out/a.json")) == {"t": "x"}


def test_same_size_handler_edit_within_one_second_runs_the_new_code(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a run with bytecode caching on (the default outside this test environment)
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n',
            "in/a.txt": "x",
        }
    )
    stamp = 1_700_000_000 * 10**9
    handler = ws.write("handlers/h.py", 'def s(t: str) -> str:\n    return "AAA"\n')
    os.utime(handler, ns=(stamp, stamp))
    assert ws.sub("run", unset=("PYTHONDONTWRITEBYTECODE",)).code == 0

    # When the handler is saved again within the same second with the same size
    ws.write("handlers/h.py", 'def s(t: str) -> str:\n    return "BBB"\n')
    os.utime(handler, ns=(stamp + 500_000_000, stamp + 500_000_000))
    assert ws.sub("run", unset=("PYTHONDONTWRITEBYTECODE",)).code == 0

    # Then the new code ran
    assert ws.read("out/a.txt") == "BBB"


def test_process_executor_runs_sync_handlers_in_worker_processes(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a workspace configured with executor = "process"
    ws = make_workspace(
        {
            "eventrunner.toml": '[runtime]\nexecutor = "process"\n',
            "pipelines/p.toml": (
                '[stages.s]\nhandler = "h:s"\ninputs = { t = "in/{n}.txt" }\noutput = "out/{n}.txt"\n'
            ),
            "handlers/h.py": "import os\n\n\ndef s(t: str) -> str:\n    return f'{t.upper()} {os.getpid()}'\n",
            "in/a.txt": "x",
            "in/b.txt": "y",
        }
    )

    # When it runs
    report = ws.run()

    # Then both handlers ran, in processes other than this one
    assert report["succeeded"] == 2
    text, pid = ws.read("out/a.txt").split()
    assert text == "X"
    assert int(pid) != os.getpid()
