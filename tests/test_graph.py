"""The stage graph across pipelines: rendering, stage kinds, shared patterns and constraints."""

from __future__ import annotations

import pytest
from conftest import MakeWorkspace, Workspace

from eventrunner.workspace.load import load_workspace

INGEST = """\
name = "ingest"

[sources.raw]
pattern = "raw/{id:\\\\d+}.txt"

[stages.clean]
handler = "h:clean"
inputs  = { text = "raw/{id}.txt" }
output  = "clean/{id}.txt"

[stages.explode]
handler = "h:explode"
inputs  = { text = "clean/{id}.txt" }
output  = "words/{id}/{word}.txt"
"""

REPORT = """\
name = "report"

[stages.tally]
handler = "h:tally"
inputs  = { texts = "clean/{id}.txt" }
output  = "tally.txt"

[stages.stamp]
handler = "h:stamp"
output  = "stamp.txt"
"""

HANDLERS = """\
def clean(text: str) -> str:
    return text.strip().lower() + "\\n"


def explode(text: str) -> dict:
    return {w: w + "\\n" for w in text.split()}


def tally(texts: dict[str, str]) -> str:
    return "".join(f"{k}:{len(v.split())}\\n" for k, v in sorted(texts.items()))


def stamp() -> str:
    return "stamped\\n"
"""

STAGES = ("ingest.clean", "ingest.explode", "report.tally", "report.stamp")


@pytest.fixture
def two(make_workspace: MakeWorkspace) -> Workspace:
    """Two pipelines sharing clean/{id}.txt; a constrained source; a generator."""
    return make_workspace(
        {
            "pipelines/ingest.toml": INGEST,
            "pipelines/report.toml": REPORT,
            "handlers/h.py": HANDLERS,
            "raw/1.txt": "Hello World\n",
            "raw/22.txt": "A B C\n",
            "raw/notanumber.txt": "ignored\n",
        }
    )


@pytest.mark.parametrize("fmt", ["text", "mermaid", "dot"])
def test_graph_mentions_every_stage_in_every_format(two: Workspace, fmt: str) -> None:
    res = two.cli("graph", "--format", fmt)

    assert res.code == 0
    for stage in STAGES:
        assert stage in res.out, (fmt, stage)
    assert "raw/{id}.txt" in res.out
    if fmt == "mermaid":
        assert res.out.startswith("flowchart")
    if fmt == "dot":
        assert res.out.startswith("digraph") and res.out.rstrip().endswith("}")


def test_stage_kinds_are_classified_from_their_variables(two: Workspace) -> None:
    graph = load_workspace(two.root, env={}).graph

    kinds = {q: graph.stages[q].kind for q in STAGES}

    assert kinds == {
        "ingest.clean": "map",
        "ingest.explode": "fanout",
        "report.tally": "fanin",
        "report.stamp": "generator",
    }
    assert graph.producer["clean/{id}.txt"] == "ingest.clean"
    assert set(graph.closure_downstream("ingest.clean")) == {"ingest.explode", "report.tally"}
    assert graph.order.index("ingest.clean") < graph.order.index("report.tally")


def test_a_pipeline_consumes_what_another_produces(two: Workspace) -> None:
    two.run()

    assert two.read("clean/22.txt") == "a b c\n"
    assert two.read("tally.txt") == "1:2\n22:3\n"
    assert two.read("words/1/hello.txt") == "hello\n"
    assert two.read("stamp.txt") == "stamped\n"


def test_a_constraint_declared_on_the_source_applies_to_every_use_of_the_pattern(
    two: Workspace,
) -> None:
    two.run()

    assert not two.exists("clean/notanumber.txt")
    assert ("ingest.clean", "notanumber") not in two.states()


def test_run_can_select_one_pipeline(two: Workspace) -> None:
    report = two.run("--pipeline", "ingest")

    assert report["executed"] == 4  # clean x2, explode x2
    assert not two.exists("tally.txt")
    assert not two.exists("stamp.txt")


def test_status_lists_every_pipeline(two: Workspace) -> None:
    data = two.cli("status", "--json").json

    assert set(data["pipelines"]) == {"ingest", "report"}
    assert set(data["pipelines"]["report"]["stages"]) == {"tally", "stamp"}
    only = two.cli("status", "--pipeline", "report", "--json").json
    assert set(only["pipelines"]) == {"report"}
