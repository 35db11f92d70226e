"""Validation of pipeline files and workspace settings: every problem with file, field, reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeWorkspace, Workspace

from eventrunner.workspace.settings import load_settings

HANDLER = "def s(t: str) -> str:\n    return t.upper()\n"

STAGE = """\
[stages.s]
handler = "h:s"
inputs  = { t = "inbox/{n}.txt" }
output  = "out/{n}.txt"
"""


def problems(ws: Workspace) -> list[dict[str, Any]]:
    """`validate --json` of an invalid workspace: exit 2 and the problem list."""
    res = ws.cli("validate", "--json")
    assert res.code == 2, (res.out, res.err)
    data = res.json
    assert data["valid"] is False
    found: list[dict[str, Any]] = data["problems"]
    return found


def one_problem(ws: Workspace) -> dict[str, Any]:
    [problem] = problems(ws)
    return problem


def invalid(make_workspace: MakeWorkspace, pipeline: str, handler: str = HANDLER) -> Workspace:
    return make_workspace({"pipelines/p.toml": pipeline, "handlers/h.py": handler})


def test_valid_workspace_validates_with_exit_0(make_workspace: MakeWorkspace) -> None:
    ws = invalid(make_workspace, STAGE)

    res = ws.cli("validate", "--json")

    assert res.code == 0
    assert res.json["valid"] is True
    assert res.json["stages"] == ["p.s"]


def test_toml_syntax_error_names_the_file(make_workspace: MakeWorkspace) -> None:
    ws = invalid(make_workspace, "[stages.s\nhandler = ")

    p = one_problem(ws)

    assert p["file"] == "pipelines/p.toml"
    assert "parse" in p["reason"]


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ('colour = "red"', "stages.s.colour", "unknown field"),
        ('timeout = "5 parsecs"', "stages.s.timeout", "not a duration"),
        (
            'retry = { max_attempts = 2, backoff = "soon" }',
            "stages.s.retry.backoff",
            "not a duration",
        ),
        (
            "retry = { max_attempts = 0 }",
            "stages.s.retry.max_attempts",
            "greater than or equal to 1",
        ),
        ('priority = "high"', "stages.s.priority", "integer"),
    ],
)
def test_schema_errors_name_file_field_and_reason(
    make_workspace: MakeWorkspace, extra: str, field: str, reason: str
) -> None:
    ws = invalid(make_workspace, STAGE + extra + "\n")

    p = one_problem(ws)

    assert (p["file"], p["field"]) == ("pipelines/p.toml", field)
    assert reason in p["reason"]


@pytest.mark.parametrize(
    ("pipeline", "handler", "field", "reason"),
    [
        (
            STAGE.replace("inbox/{n}.txt", "inbox/{n:[a-}.txt"),
            HANDLER,
            "stages.s.inputs.t",
            "bad pattern",
        ),
        (STAGE.replace('"h:s"', '"nomod:s"'), HANDLER, "stages.s.handler", "no module 'nomod'"),
        (STAGE.replace('"h:s"', '"h:nope"'), HANDLER, "stages.s.handler", "no function 'nope'"),
        (
            STAGE,
            "def s(x: str) -> str:\n    return x\n",
            "stages.s.handler",
            "signature does not match",
        ),
        (STAGE.replace('"h:s"', '"h:s:t"'), HANDLER, "stages.s.handler", "module:function"),
        (
            '[stages.s]\nhandler = "h:s"\ninputs = { t = "a/{p}.txt", u = "b/{q}.txt" }\noutput = "out/{p}/{q}.txt"\n',
            "def s(t: str, u: str) -> str:\n    return t\n",
            "stages.s.output",
            "not all bound by one input",
        ),
        (
            STAGE + 'schedule = "61 * * * *"\n',
            HANDLER,
            "stages.s.schedule",
            "bad cron",
        ),
        (
            '[sources.hook]\npattern = "inbox/{n}.txt"\nwebhook = { max_body = 10 }\n\n' + STAGE,
            HANDLER,
            "sources.hook.webhook",
            "secret_env",
        ),
        ('name = "bad name!"\n' + STAGE, HANDLER, "name", "pipeline name"),
        (
            STAGE.replace("[stages.s]", "[stages.'bad stage']"),
            HANDLER,
            "stages.bad stage",
            "name must be",
        ),
    ],
)
def test_graph_and_handler_errors_name_file_field_and_reason(
    make_workspace: MakeWorkspace, pipeline: str, handler: str, field: str, reason: str
) -> None:
    ws = invalid(make_workspace, pipeline, handler)

    found = problems(ws)

    assert any(
        p["file"] == "pipelines/p.toml" and p["field"] == field and reason in p["reason"]
        for p in found
    ), found


@pytest.mark.parametrize(
    ("files", "file", "field", "reason"),
    [
        (
            {"pipelines/p.toml": '[sources.out]\npattern = "out/{n}.txt"\n\n' + STAGE},
            "pipelines/p.toml",
            "sources.out.pattern",
            "cannot be a source",
        ),
        (
            {
                "pipelines/p.toml": '[sources.a]\npattern = "inbox/{n:\\\\d+}.txt"\n\n'
                + STAGE.replace('{n}.txt"', '{n:[a-z]+}.txt"', 1)
            },
            "pipelines/p.toml",
            "stages.s.inputs.t",
            "two constraints",
        ),
        (
            {"pipelines/p.toml": STAGE, "pipelines/q.toml": 'name = "p"\n'},
            "pipelines/q.toml",
            "name",
            "also defined",
        ),
    ],
)
def test_conflicts_between_declarations_are_reported(
    make_workspace: MakeWorkspace, files: dict[str, str], file: str, field: str, reason: str
) -> None:
    ws = make_workspace({**files, "handlers/h.py": HANDLER})

    found = problems(ws)

    assert any(
        p["file"] == file and p["field"] == field and reason in p["reason"] for p in found
    ), found


def test_cycle_between_stages_is_reported(make_workspace: MakeWorkspace) -> None:
    pipeline = """\
    [stages.one]
    handler = "h:s"
    inputs  = { t = "a/{n}.txt" }
    output  = "b/{n}.txt"

    [stages.two]
    handler = "h:s"
    inputs  = { t = "b/{n}.txt" }
    output  = "a/{n}.txt"
    """
    ws = invalid(make_workspace, pipeline)

    p = one_problem(ws)

    assert p["file"] == "pipelines/p.toml"
    assert p["field"].startswith("stages.")
    assert "cycle" in p["reason"] and "p.one" in p["reason"] and "p.two" in p["reason"]


def test_duplicate_producer_across_two_pipelines_is_reported(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": STAGE,
            "pipelines/q.toml": STAGE.replace("inbox/", "other/"),
            "handlers/h.py": HANDLER,
        }
    )

    p = one_problem(ws)

    assert (p["file"], p["field"]) == ("pipelines/q.toml", "stages.s.output")
    assert "also produced by" in p["reason"] and "p.s" in p["reason"]


def test_webhook_with_allow_unsigned_is_accepted(make_workspace: MakeWorkspace) -> None:
    ws = invalid(
        make_workspace,
        '[sources.hook]\npattern = "inbox/{n}.txt"\nwebhook = { allow_unsigned = true }\n\n'
        + STAGE,
    )

    assert ws.cli("validate").code == 0


@pytest.mark.parametrize(
    ("webhook", "field", "reason"),
    [
        (
            '{ secret_env = "HOOK", schemes = ["github", "strpe"] }',
            "sources.hook.webhook.schemes",
            "unknown webhook scheme 'strpe' (known: standard, github",
        ),
        ('{ secret_env = "HOOK", schemes = [] }', "sources.hook.webhook.schemes", "at least one"),
        ('{ secret_env = "HOOK", schemes = "github" }', "sources.hook.webhook.schemes", "tuple"),
        (
            '{ allow_unsigned = true, schemes = ["github"] }',
            "sources.hook.webhook.schemes",
            "schemes needs secret_env",
        ),
    ],
)
def test_webhook_schemes_are_checked_at_validation(
    make_workspace: MakeWorkspace, webhook: str, field: str, reason: str
) -> None:
    ws = invalid(
        make_workspace,
        f'[sources.hook]\npattern = "inbox/{{n}}.txt"\nwebhook = {webhook}\n\n' + STAGE,
    )

    p = one_problem(ws)

    assert (p["file"], p["field"]) == ("pipelines/p.toml", field)
    assert reason in p["reason"]


def test_webhook_schemes_naming_known_schemes_validate(make_workspace: MakeWorkspace) -> None:
    webhook = '{ secret_env = "HOOK", schemes = ["github", "standard", "github"] }'
    ws = invalid(
        make_workspace,
        f'[sources.hook]\npattern = "inbox/{{n}}.txt"\nwebhook = {webhook}\n\n' + STAGE,
    )

    assert ws.cli("validate").code == 0


def test_several_problems_are_reported_at_once(make_workspace: MakeWorkspace) -> None:
    # Given problems in two pipeline files
    ws = make_workspace(
        {
            "pipelines/p.toml": STAGE.replace('"h:s"', '"h:nope"')
            + '\n[stages.t]\nhandler = "h:s"\ninputs = { t = "x/{n}.txt" }\noutput = "y/{n}.txt"\ntimeout = "soon"\n',
            "pipelines/q.toml": 'name = "bad name!"\n',
            "handlers/h.py": HANDLER,
        }
    )

    # When validating (text output)
    res = ws.cli("validate")

    # Then every problem is listed on its own line with file and field, exit 2
    assert res.code == 2
    assert "pipelines/p.toml: stages.t.timeout:" in res.err
    assert "pipelines/q.toml: name:" in res.err
    # The pydantic error in p.toml hides its handler check; the two above must both appear
    assert "2 problem(s)" in res.err or "3 problem(s)" in res.err


def test_several_graph_and_handler_problems_are_reported_at_once(
    make_workspace: MakeWorkspace,
) -> None:
    pipeline = (
        STAGE.replace('"h:s"', '"h:nope"')
        + '\n[stages.t]\nhandler = "missing:s"\ninputs = { t = "x/{n}.txt" }\noutput = "y/{n}.txt"\n'
        + '\n[sources.hook]\npattern = "x/{n}.txt"\nwebhook = {}\n'
    )
    ws = invalid(make_workspace, pipeline)

    fields = sorted(p["field"] for p in problems(ws))

    assert fields == ["sources.hook.webhook", "stages.s.handler", "stages.t.handler"]


def test_invalid_workspace_exits_2_without_traceback_in_a_real_process(
    make_workspace: MakeWorkspace,
) -> None:
    ws = invalid(make_workspace, STAGE + 'timeout = "5 parsecs"\n')

    for args in (["validate"], ["run"], ["status"]):
        res = ws.sub(*args)
        assert res.code == 2, (args, res.err)
        assert "Traceback" not in res.err
        assert "pipelines/p.toml: stages.s.timeout:" in res.err


def test_toml_syntax_error_exits_2_without_traceback_in_a_real_process(
    make_workspace: MakeWorkspace,
) -> None:
    ws = invalid(make_workspace, "[stages.s\n")

    res = ws.sub("validate")

    assert res.code == 2
    assert "Traceback" not in res.err
    assert "pipelines/p.toml" in res.err


def test_json_pipeline_files_use_the_same_schema(make_workspace: MakeWorkspace) -> None:
    spec = {
        "name": "j",
        "stages": {
            "s": {"handler": "h:s", "inputs": {"t": "inbox/{n}.txt"}, "output": "out/{n}.txt"}
        },
    }
    ws = make_workspace(
        {"pipelines/j.json": json.dumps(spec), "handlers/h.py": HANDLER, "inbox/a.txt": "x"}
    )

    assert ws.run()["succeeded"] == 1
    assert ws.read("out/a.txt") == "X"

    spec["stages"]["s"]["colour"] = "red"  # type: ignore[index]
    ws.write("pipelines/j.json", json.dumps(spec))
    p = one_problem(ws)
    assert (p["file"], p["field"], p["reason"]) == (
        "pipelines/j.json",
        "stages.s.colour",
        "unknown field",
    )


def test_no_pipeline_files_is_a_problem(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace({"eventrunner.toml": "", "handlers/h.py": HANDLER})

    assert one_problem(ws)["file"].startswith("pipelines")


# -- eventrunner.toml and EVENTRUNNER_* -----------------------------------------------------


def test_data_root_setting_moves_the_data_files(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "eventrunner.toml": 'data_root = "data"\n',
            "pipelines/p.toml": STAGE,
            "handlers/h.py": HANDLER,
            "data/inbox/a.txt": "x",
        }
    )

    ws.run()

    assert ws.read("data/out/a.txt") == "X"
    assert not ws.exists("out")


def test_runtime_retry_setting_is_the_default_retry_policy(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "eventrunner.toml": "[runtime.retry]\nmax_attempts = 1\n",
            "pipelines/p.toml": STAGE,
            "handlers/h.py": "def s(t: str) -> str:\n    raise RuntimeError('no')\n",
            "inbox/a.txt": "x",
        }
    )

    ws.run(expect=1)

    assert ws.states()[("p.s", "a")] == "dead"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ("[runtime]\nconcurrency = 0\n", "runtime.concurrency"),
        ('[runtime]\ndebounce = "later"\n', "runtime.debounce"),
        ("[server]\ncolour = 1\n", "server.colour"),
        ("speed = 3\n", "speed"),
    ],
)
def test_bad_workspace_settings_exit_2_naming_the_field(
    make_workspace: MakeWorkspace, settings: str, field: str
) -> None:
    ws = make_workspace(
        {"eventrunner.toml": settings, "pipelines/p.toml": STAGE, "handlers/h.py": HANDLER}
    )

    res = ws.cli("status")

    assert res.code == 2
    assert f"eventrunner.toml: {field}:" in res.err


def test_env_overrides_the_settings_file_and_flags_override_both(tmp_path: Path) -> None:
    (tmp_path / "eventrunner.toml").write_text(
        "[runtime]\nconcurrency = 5\n[server]\nport = 9000\n"
    )

    from_file = load_settings(tmp_path, env={})
    from_env = load_settings(
        tmp_path, env={"EVENTRUNNER_RUNTIME_CONCURRENCY": "3", "EVENTRUNNER_SERVER_PORT": "9100"}
    )
    from_flags = load_settings(
        tmp_path, {"runtime": {"concurrency": 7}}, env={"EVENTRUNNER_RUNTIME_CONCURRENCY": "3"}
    )

    assert (from_file.runtime.concurrency, from_file.server.port) == (5, 9000)
    assert (from_env.runtime.concurrency, from_env.server.port) == (3, 9100)
    assert from_flags.runtime.concurrency == 7


def test_bad_env_override_exits_2(
    make_workspace: MakeWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace({"pipelines/p.toml": STAGE, "handlers/h.py": HANDLER, "inbox/a.txt": "x"})
    monkeypatch.setenv("EVENTRUNNER_RUNTIME_CONCURRENCY", "0")

    res = ws.cli("run")

    assert res.code == 2
    assert "runtime.concurrency" in res.err


def test_env_concurrency_is_used_by_run(
    make_workspace: MakeWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": STAGE,
            "handlers/h.py": HANDLER,
            "inbox/a.txt": "x",
            "inbox/b.txt": "y",
        }
    )
    monkeypatch.setenv("EVENTRUNNER_RUNTIME_CONCURRENCY", "1")

    assert ws.run()["succeeded"] == 2


def test_env_data_root_overrides_the_settings_file(
    make_workspace: MakeWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace(
        {
            "eventrunner.toml": 'data_root = "data"\n',
            "pipelines/p.toml": STAGE,
            "handlers/h.py": HANDLER,
            "elsewhere/inbox/a.txt": "x",
        }
    )
    monkeypatch.setenv("EVENTRUNNER_DATA_ROOT", "elsewhere")

    ws.run()

    assert ws.read("elsewhere/out/a.txt") == "X"
