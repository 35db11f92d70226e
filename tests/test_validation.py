"""Validation reports every problem at once, rejects overlapping outputs, and imports handlers."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MakeWorkspace, Workspace

from eventrunner.cli.main import main
from eventrunner.core.patterns import parse_pattern
from eventrunner.workspace.overlap import shared_path

UP = "def up(r: str) -> str:\n    return r.upper()\n\n\ndef all(r: dict[str, str]) -> str:\n    return str(len(r))\n"

MANY_PROBLEMS = """\
[stages.s1]
handler = "h:up"
inputs = { r = "raw/{id}.txt" }
output = "one/{id}.txt"
bogus = 1

[stages.s2]
handler = "h:nothere"
inputs = { r = "raw/{id}.txt" }
output = "two/{id}.txt"

[stages.s3]
handler = "h:up"
inputs = { r = "raw/{id:[}.txt" }
output = "three/{id}.txt"

[stages.s4]
handler = "h:up"
inputs = { r = "raw/{id}.txt" }
output = "four/{id}.txt"
timeout = "5 parsecs"

[stages.s5]
handler = "h:up"
inputs = { x = "raw/{id}.txt" }
output = "five/{id}.txt"
"""

CYCLE = """\
[stages.c1]
handler = "h:up"
inputs = { r = "cy/{id}.b" }
output = "cy/{id}.a"

[stages.c2]
handler = "h:up"
inputs = { r = "cy/{id}.a" }
output = "cy/{id}.b"
"""


def test_validate_reports_every_problem_of_every_file_in_one_pass(
    make_workspace: MakeWorkspace,
) -> None:
    # Given two pipeline files with problems of six kinds
    ws = make_workspace(
        {"pipelines/a.toml": MANY_PROBLEMS, "pipelines/b.toml": CYCLE, "handlers/h.py": UP}
    )
    # When validating once
    res = ws.cli("validate")
    # Then each problem is listed, with file and field, before anything is fixed
    assert res.code == 2
    for fragment in (
        "pipelines/a.toml: stages.s1.bogus: unknown field",
        "pipelines/a.toml: stages.s2.handler: no function 'nothere'",
        "pipelines/a.toml: stages.s3.inputs.r: bad pattern",
        "pipelines/a.toml: stages.s4.timeout: not a duration",
        "pipelines/a.toml: stages.s5.handler: handler h:up signature does not match",
        "pipelines/b.toml: stages.c1: cycle between stages",
    ):
        assert fragment in res.err, (fragment, res.err)
    assert "6 problem(s)" in res.err


def test_two_outputs_that_can_name_one_path_are_rejected_naming_both(
    make_workspace: MakeWorkspace,
) -> None:
    # Given init's old scaffold: html writes site/{slug}.html, index writes site/index.html
    ws = make_workspace(
        {
            "pipelines/p.toml": """\
                [stages.html]
                handler = "h:up"
                inputs = { r = "notes/{slug}.md" }
                output = "site/{slug}.html"

                [stages.index]
                handler = "h:all"
                inputs = { r = "notes/{slug}.md" }
                output = "site/index.html"
                """,
            "handlers/h.py": UP,
        }
    )
    # Then validation names both stages, an example path and a way out
    res = ws.cli("validate")
    assert res.code == 2
    assert "stages.html.output" in res.err
    assert "p.index" in res.err and "site/index.html" in res.err
    assert "constrain a variable" in res.err
    # And the suggested constraint makes the pair valid
    ws.write(
        "pipelines/p.toml",
        ws.read("pipelines/p.toml").replace("site/{slug}.html", "site/{slug:(?!index$)[^/]+}.html"),
    )
    assert ws.cli("validate").code == 0, ws.cli("validate").err


def test_an_output_that_a_source_pattern_also_matches_is_rejected(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a stage writing into the folder it reads its inbox from
    ws = make_workspace(
        {
            "pipelines/p.toml": """\
                [stages.done]
                handler = "h:up"
                inputs = { r = "inbox/{name}.txt" }
                output = "inbox/{name}-done.txt"
                """,
            "handlers/h.py": UP,
        }
    )
    res = ws.cli("validate")
    assert res.code == 2
    assert "the source pattern 'inbox/{name}.txt'" in res.err


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("site/{slug}.html", "site/index.html", "site/index.html"),
        ("out/{a}.txt", "out/{b}-x.txt", "out/{b}-x.txt"),
        ("out/{id:\\d+}.txt", "out/{n:[a-z]+}.txt", None),
        ("site/{slug:(?!index$)[^/]+}.html", "site/index.html", None),
        ("blog/{date}.md", "blog/{date}/x.md", None),
        ("a/{x}.txt", "b/{x}.txt", None),
        ("{d}/{f}", "pipelines/x.toml", "pipelines/x.toml"),
    ],
)
def test_shared_path_decides_overlap_by_segment(a: str, b: str, overlap: str | None) -> None:
    assert shared_path(parse_pattern(a), parse_pattern(b)) == overlap


def test_init_scaffold_has_no_overlapping_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the scaffold with a note called index (the name that used to collide)
    target = tmp_path / "new"
    assert main(["init", str(target)]) == 0
    ws = Workspace(target, capsys)
    ws.write("notes/index.md", "the index note\n")
    # Then it validates and both pages exist side by side after a run
    assert ws.cli("validate").code == 0
    assert ws.run()["failed"] == 0
    assert "the index note" in ws.read("site/notes/index.html")
    assert 'href="notes/index.html"' in ws.read("site/index.html")
    assert set(ws.states().values()) == {"fresh"}


def test_validate_reports_a_module_import_error_with_file_and_line(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a handler module whose second line raises at import time
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.up]\nhandler = "h:up"\ninputs = { r = "raw/{id}.txt" }\noutput = "up/{id}.txt"\n',
            "handlers/h.py": "import os\nimport no_such_module_here\n\n" + UP,
            "raw/a.txt": "a\n",
        }
    )
    res = ws.cli("validate")
    assert res.code == 2
    assert "handlers/h.py:2: cannot import: ModuleNotFoundError" in res.err


def test_a_syntax_error_names_the_workspace_relative_file_and_line(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.up]\nhandler = "h:up"\ninputs = { r = "raw/{id}.txt" }\noutput = "up/{id}.txt"\n',
            "handlers/h.py": "def up(r: str) -> str:\n    return r.upper(\n",
        }
    )
    res = ws.cli("validate")
    assert res.code == 2
    assert "handlers/h.py:2: syntax error" in res.err


def test_fixing_a_module_level_error_reruns_the_failed_states(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a module that fails at import, and a run that recorded the failure (day-long backoff)
    ws = make_workspace(
        {
            "pipelines/p.toml": '[stages.up]\nhandler = "h:up"\ninputs = { r = "raw/{id}.txt" }\noutput = "up/{id}.txt"\n',
            "handlers/h.py": "import no_such_module_here\n\n" + UP,
            "raw/a.txt": "a\n",
            "raw/b.txt": "b\n",
        }
    )
    assert ws.run(expect=1)["failed"] == 2
    assert set(ws.states().values()) == {"failed"}
    # When only the module's top-level import is fixed (the handler's code identity is unchanged)
    ws.write("handlers/h.py", "import os\n\n" + UP)
    # Then the next run starts afresh instead of skipping the failures in backoff
    report = ws.run()
    assert report["executed"] == 2 and report["succeeded"] == 2
    assert set(ws.states().values()) == {"fresh"}
    assert ws.read("up/a.txt") == "A\n"
