"""The group commit under storage faults: a failed commit is a failed attempt, retried.

A real `eventrunner serve` whose `.eventrunner/` is a small tmpfs mounted by the test (root
only), filled up while the server runs.
"""

from __future__ import annotations

from pathlib import Path

from conftest import MakeWorkspace
from disk_helpers import fill, small_tmpfs
from serve_helpers import Server, read, wait_until

PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"

[stages.upper]
handler = "h:upper"
inputs  = { text = "inbox/{name}.txt" }
output  = "up/{name}.txt"
retry   = { max_attempts = 1000, backoff = "200ms", max_backoff = "200ms" }
"""

HANDLERS = """\
from pathlib import Path

RUNS = Path(__file__).resolve().parent.parent / "runs.log"


def upper(ctx, text: str) -> str:
    with open(RUNS, "a") as fh:
        fh.write(ctx.entity_id + "\\n")
    return text.upper()
"""

RUNTIME = """\
[runtime]
debounce = "20ms"
settle = "50ms"
retry_sweep_interval = "200ms"
reconcile_interval = "1h"
concurrency = 1
"""


def explain(server: Server, eid: str) -> dict[str, object]:
    """The entity's row from the server; empty until the watcher has delivered its file."""
    status, body = server.get(f"/api/pipelines/p/entities/{eid}")
    if status == 404:
        return {}
    assert status == 200, body
    row: dict[str, object] = body["stages"][0]
    return row


def test_a_commit_that_fails_on_a_full_disk_is_retried_once_space_is_freed(
    make_workspace: MakeWorkspace, tmp_path: Path
) -> None:
    ws = make_workspace(
        {
            "eventrunner.toml": RUNTIME,
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": HANDLERS,
            "inbox/first.txt": "first\n",
        }
    )
    with small_tmpfs(ws.path(".eventrunner")) as state, Server(ws.root, tmp_path) as server:
        # Given a server that committed one state, then its state folder filling up
        wait_until(lambda: read(ws.path("up/first.txt")) == "FIRST\n", "the first output")
        wait_until(lambda: explain(server, "first").get("state") == "fresh", "first fresh")
        filler = fill(state)

        # When a file arrives: the handler runs, but its manifest cannot be written
        ws.write("inbox/later.txt", "later\n")

        def failed() -> object:
            row = explain(server, "later")
            return row.get("failure") and "No space left" in str(row["failure"])

        wait_until(failed, "the failed commit to be recorded")
        assert "commit failed" in str(explain(server, "later")["failure"])
        assert read(ws.path("runs.log")) is not None
        assert "later" in ws.read("runs.log")

        # And space is freed again
        filler.unlink()

        # Then the state becomes fresh without a restart or a reconcile: the retry ran the
        # handler again and wrote everything anew
        wait_until(lambda: explain(server, "later")["state"] == "fresh", "later to be fresh")
        assert read(ws.path("up/later.txt")) == "LATER\n"
        assert ws.read("runs.log").count("later") >= 2
        assert explain(server, "later")["failure"] is None
        assert server.stop() == 0, server.stderr
