"""Shared fixtures: a workspace factory on real files in tmp_path, and CLI runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventrunner.cli.main import main


@dataclass
class Result:
    """What one CLI invocation printed and returned."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class Workspace:
    """A workspace folder under tmp_path with helpers to edit files and call the CLI."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self._capsys = capsys

    # -- files ---------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, content: str | bytes) -> Path:
        """Write a file (text is dedented), creating folders."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
        return path

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink()

    def runs(self) -> list[str]:
        """Lines that handlers using LOG_HELPER appended since the last call ("stage entity")."""
        log = self.root / "runs.log"
        if not log.exists():
            return []
        lines = log.read_text(encoding="utf-8").splitlines()
        log.unlink()
        return lines

    # -- CLI -----------------------------------------------------------------------------
    def cli(self, *args: str) -> Result:
        """`eventrunner -w ROOT ARGS...` in this process."""
        self._capsys.readouterr()
        code = main(["-w", str(self.root), *args])
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def sub(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        unset: tuple[str, ...] = (),
        timeout: float = 60,
    ) -> Result:
        """`eventrunner -w ROOT ARGS...` as a real subprocess."""
        full_env = {k: v for k, v in os.environ.items() if k not in unset}
        proc = subprocess.run(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(self.root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**full_env, **(env or {})},
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run(self, *args: str, expect: int | None = 0) -> dict[str, Any]:
        """`run --json`; checks the exit code unless expect is None."""
        res = self.cli("run", "--json", *args)
        if expect is not None:
            assert res.code == expect, (res.out, res.err)
        data: dict[str, Any] = res.json
        return data

    def states(self, stage: str | None = None) -> dict[tuple[str, str], str]:
        """{(stage qualname, entity id): state} from `entities --json`."""
        args = ["entities", "--json", *(["--stage", stage] if stage else [])]
        res = self.cli(*args)
        assert res.code == 0, res.err
        return {(r["stage"], r["entity"]): r["state"] for r in res.json["entities"]}

    def explain(self, entity: str, stage: str) -> dict[str, Any]:
        """The explain row of one (stage, entity)."""
        res = self.cli("explain", entity, "--stage", stage, "--json")
        assert res.code == 0, res.err
        rows: list[dict[str, Any]] = res.json["stages"]
        assert len(rows) == 1, rows
        return rows[0]

    def reasons(self, entity: str, stage: str) -> set[str]:
        """Reason codes that `explain` gives for one (stage, entity)."""
        return {r["code"] for r in self.explain(entity, stage)["reasons"]}


# Paste into a handler module and call `_log("stage", ctx.entity_id)`: Workspace.runs() reads it.
LOG_HELPER = """\
from pathlib import Path


def _log(stage, key):
    with open(Path(__file__).resolve().parent.parent / "runs.log", "a") as fh:
        fh.write(f"{stage} {key}\\n")
"""

LOGGED_ECHO_HANDLERS = (
    LOG_HELPER
    + """

def shout(ctx, text: str) -> str:
    _log("shout", ctx.entity_id)
    return text.strip().upper() + ctx.params["suffix"] + "\\n"


def count(ctx, text: str) -> dict:
    _log("count", ctx.entity_id)
    return {"words": len(text.split())}


def summary(ctx, counts: dict[str, dict]) -> str:
    _log("summary", ctx.entity_id)
    return "".join(f"{k}={v['words']}\\n" for k, v in sorted(counts.items()))
"""
)


def age(ws: Workspace, seconds: float = 5.0) -> None:
    """Move recently written files' mtimes into the past (outside the stat fast path's racy
    window), as if written a while ago; files already older keep their stats."""
    import time

    now = time.time()
    for dirpath, dirnames, filenames in os.walk(ws.root):
        dirnames[:] = [d for d in dirnames if d not in (".eventrunner", "__pycache__")]
        for name in [*filenames, "."]:
            path = Path(dirpath) / name
            if path.stat().st_mtime > now - 1.0:
                os.utime(path, (now - seconds, now - seconds))


MakeWorkspace = Callable[[Mapping[str, str | bytes]], Workspace]


@pytest.fixture
def make_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> MakeWorkspace:
    """Build a workspace from {relative path: content}; each call gets a fresh folder."""
    counter = iter(range(1000))

    def make(files: Mapping[str, str | bytes]) -> Workspace:
        root = tmp_path / f"ws{next(counter)}"
        root.mkdir()
        ws = Workspace(root, capsys)
        if "eventrunner.toml" not in files:
            # Backoff is uniform in [0, cap] (full jitter): with the default 30 s cap a failure
            # re-checked half a second later has already expired one time in 60, and tests that
            # read "failed" right after a failure flaked. A day-long cap makes that 1 in 10^5.
            ws.write("eventrunner.toml", DETERMINISTIC_RETRY)
        for rel, content in files.items():
            ws.write(rel, content)
        return ws

    return make


DETERMINISTIC_RETRY = '[runtime]\nretry = { backoff = "1d", max_backoff = "1d" }\n'

# A small pipeline used by many tests: map -> chain -> fan-in.
# A map -> map -> fan-in chain (handlers h:upper, h:count, h:total, written by each test).
FANIN_CHAIN = """\
[stages.upper]
handler = "h:upper"
inputs  = { r = "raw/{id}.txt" }
output  = "up/{id}.txt"

[stages.count]
handler = "h:count"
inputs  = { u = "up/{id}.txt" }
output  = "count/{id}.txt"

[stages.total]
handler = "h:total"
inputs  = { c = "count/{id}.txt" }
output  = "total.txt"
"""

ECHO_PIPELINE = """\
name = "echo"

[stages.shout]
handler = "echo:shout"
inputs  = { text = "inbox/{name}.txt" }
output  = "shouted/{name}.txt"
params  = { suffix = "!" }

[stages.count]
handler = "echo:count"
inputs  = { text = "shouted/{name}.txt" }
output  = "counts/{name}.json"

[stages.summary]
handler = "echo:summary"
inputs  = { counts = "counts/{name}.json" }
output  = "summary.md"
"""

ECHO_HANDLERS = """\
def shout(ctx, text: str) -> str:
    return text.strip().upper() + ctx.params["suffix"] + "\\n"


def count(text: str) -> dict:
    return {"words": len(text.split())}


def summary(counts: dict[str, dict]) -> str:
    return "".join(f"{k}={v['words']}\\n" for k, v in sorted(counts.items()))
"""


@pytest.fixture
def echo(make_workspace: MakeWorkspace) -> Workspace:
    """The map/chain/fan-in workspace with two inbox files."""
    return make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": ECHO_HANDLERS,
            "inbox/a.txt": "hello world\n",
            "inbox/b.txt": "one two three\n",
        }
    )
