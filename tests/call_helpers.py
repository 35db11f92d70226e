"""The `Call` the engine would make for one (stage, entity), for tests that drive an executor
directly: the stage's one input is `t = "in/{n}.txt"`, as in those tests' pipelines."""

from __future__ import annotations

from pathlib import Path

from eventrunner.run.executors import Call
from eventrunner.run.inputfile import InputFile
from eventrunner.workspace import loader
from eventrunner.workspace.load import Workspace, load_workspace


def stage_call(
    root: Path,
    qualname: str,
    entity: str,
    *,
    loaded: Workspace | None = None,
    checked: bool = False,
) -> Call:
    """One call of `qualname` on `entity` (pass `loaded` to load the workspace once for many);
    `checked`: with the stage's code identity, which the coordinator then verifies."""
    loaded = loaded or load_workspace(root)
    stage, ref = loaded.graph.stages[qualname], loaded.handlers[qualname]
    return Call(
        stage=stage,
        entity=entity,
        handler=ref,
        func=loader.load(ref),
        files=[InputFile("t", None, f"in/{entity}.txt", "")],
        values={"n": entity},
        attempt=1,
        root=root,
        code=loaded.code[qualname] if checked else "",
    )
