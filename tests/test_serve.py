"""`eventrunner serve` end to end: a real subprocess on port 0, real files, real signals."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from serve_helpers import (
    DEADLINE,
    FAST_RUNTIME,
    LOG_HELPER,
    EventStream,
    Server,
    chain_workspace,
    cli,
    count_runs,
    make_workspace,
    read,
    runs,
    serving,
    wait_until,
)

# One stage whose handler logs its start, then blocks until the file named by params.flag
# exists (at most 20 s), so a test controls exactly when it finishes.
BLOCKING_PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"

[stages.slow]
handler = "h:slow"
inputs  = { text = "inbox/{name}.txt" }
output  = "out/{name}.txt"
params  = { flag = "FLAG" }
"""

BLOCKING_HANDLERS = (
    LOG_HELPER
    + """
import time


def slow(ctx, text: str) -> str:
    _log("slow", ctx, text)
    deadline = time.monotonic() + 20
    while not Path(ctx.params["flag"]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done: " + text
"""
)

# One stage that fails while `fail.flag` exists at the workspace root.
FLAKY_PIPELINE = """\
name = "p"

[sources.inbox]
pattern = "inbox/{name}.txt"

[stages.flaky]
handler = "h:flaky"
inputs  = { text = "inbox/{name}.txt" }
output  = "out/{name}.txt"
retry   = { max_attempts = 2, backoff = "100ms", max_backoff = "100ms" }
"""

FLAKY_HANDLERS = (
    LOG_HELPER
    + """

def flaky(ctx, text: str) -> str:
    _log("flaky", ctx, text)
    if (RUNS.parent / "fail.flag").exists():
        raise RuntimeError("fail.flag is set")
    return text[::-1]
"""
)


def _blocking_workspace(root: Path, flag: Path, grace: str) -> Path:
    runtime = FAST_RUNTIME.replace('shutdown_grace = "10s"', f'shutdown_grace = "{grace}"')
    return make_workspace(
        root,
        {
            "eventrunner.toml": runtime,
            "pipelines/p.toml": BLOCKING_PIPELINE.replace("FLAG", str(flag)),
            "handlers/h.py": BLOCKING_HANDLERS,
        },
    )


def _state(root: Path, stage: str, entity: str) -> str:
    res = cli(root, "explain", entity, "--stage", stage, "--json")
    assert res.returncode == 0, res.stderr
    state: str = json.loads(res.stdout)["stages"][0]["state"]
    return state


def test_dropped_file_runs_both_stages_once_and_streams_their_events(tmp_path: Path) -> None:
    # Given a running server on a two-stage chain and a client on the event stream
    ws = chain_workspace(tmp_path / "ws")
    with serving(ws, tmp_path / "logs") as server, EventStream(server.url or "") as stream:
        # When a file is dropped into the inbox
        (ws / "inbox").mkdir()
        (ws / "inbox/a.txt").write_text("hello big world\n")
        # Then both stages produce their outputs
        wait_until(lambda: read(ws / "count/a.txt") == "3 words\n", "count/a.txt")
        assert read(ws / "up/a.txt") == "HELLO BIG WORLD\n"
        wait_until(
            lambda: any(e["stage"] == "p.count" for e in stream.of("succeeded")), "count event"
        )
        # And each ran exactly once, upper before count, each seen by the event stream
        assert [(r["stage"], r["entity"]) for r in runs(ws)] == [("upper", "a"), ("count", "a")]
        kinds = [(k, d.get("stage")) for k, d in stream.events if k != "changed"]
        assert kinds == [
            ("queued", "p.upper"),
            ("started", "p.upper"),
            ("succeeded", "p.upper"),
            ("queued", "p.count"),
            ("started", "p.count"),
            ("succeeded", "p.count"),
        ]
        assert [d["path"] for d in stream.of("changed")] == ["inbox/a.txt"]
        assert server.stop() == 0


def test_health_readiness_and_pipelines_api_answer_once_serving(tmp_path: Path) -> None:
    # Given a workspace with one inbox file nothing has processed yet
    ws = chain_workspace(tmp_path / "ws", {"inbox/a.txt": "one two\n"})
    with serving(ws, tmp_path / "logs") as server:
        # Then the ready log line, written before the serving line, counts the catch-up work
        assert "ready: 2 stages, 1 queued" in server.stderr, server.stderr
        assert server.get("/healthz") == (200, {"status": "ok"})
        assert server.get("/readyz") == (200, {"status": "ready", "ready": True})
        wait_until(lambda: read(ws / "count/a.txt"), "count/a.txt")
        wait_until(lambda: _api_counts(server)["count"]["fresh"] == 1, "count fresh in the API")
        status, body = server.get("/api/pipelines")
        assert status == 200
        assert set(body) == {"pipelines"}
        assert set(body["pipelines"]) == {"p"}
        stages = body["pipelines"]["p"]["stages"]
        assert set(stages) == {"upper", "count"}
        for counts in stages.values():
            assert set(counts) >= {"fresh", "stale", "running", "failed", "dead", "held"}
            assert counts["fresh"] == 1
            assert sum(counts.values()) == 1
        info = json.loads((ws / ".eventrunner/server.json").read_text())
        assert info == {"url": server.url, "pid": server.pid}
        assert server.stop() == 0
    assert not (ws / ".eventrunner/server.json").exists()


def _api_counts(server: Server) -> dict[str, dict[str, int]]:
    status, body = server.get("/api/pipelines")
    assert status == 200, body
    counts: dict[str, dict[str, int]] = body["pipelines"]["p"]["stages"]
    return counts


def test_second_serve_on_the_same_workspace_is_refused_naming_the_holder(tmp_path: Path) -> None:
    ws = chain_workspace(tmp_path / "ws")
    with serving(ws, tmp_path / "logs") as first:
        # When a second server starts on the same workspace
        res = cli(ws, "serve", "--port", "0", timeout=DEADLINE)
        # Then it exits non-zero and its message names the holder's pid
        assert res.returncode != 0
        assert str(first.pid) in res.stderr, res.stderr
        assert "eventrunner: serving" not in res.stdout
        # And the first one keeps serving
        assert first.get("/healthz")[0] == 200
        assert first.stop() == 0


def test_sigterm_lets_the_running_handler_finish_and_commit(tmp_path: Path) -> None:
    # Given a handler that is mid-run and blocks until a flag file appears
    flag = tmp_path / "flag"
    ws = _blocking_workspace(tmp_path / "ws", flag, grace="20s")
    with serving(ws, tmp_path / "logs") as server:
        (ws / "inbox").mkdir()
        (ws / "inbox/a.txt").write_text("payload\n")
        wait_until(lambda: count_runs(ws, "slow", "a") == 1, "the handler to start")
        # When SIGTERM arrives, and only once shutdown has begun does the handler finish
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        wait_until(lambda: not (ws / ".eventrunner/server.json").exists(), "shutdown to begin")
        flag.touch()
        # Then the process exits 0 and the handler's output was committed
        assert server.wait(DEADLINE) == 0, server.stderr
    assert read(ws / "out/a.txt") == "done: payload\n"
    assert _state(ws, "p.slow", "a") == "fresh"


def test_sigterm_gives_up_on_a_handler_that_outlives_the_grace_period(tmp_path: Path) -> None:
    # Given a handler that never finishes on its own (until its 20 s safety deadline)
    ws = _blocking_workspace(tmp_path / "ws", tmp_path / "never", grace="200ms")
    with serving(ws, tmp_path / "logs") as server:
        (ws / "inbox").mkdir()
        (ws / "inbox/a.txt").write_text("payload\n")
        wait_until(lambda: count_runs(ws, "slow", "a") == 1, "the handler to start")
        # When SIGTERM arrives, the process exits 0 well before the handler would end
        assert server.stop(timeout=10) == 0, server.stderr
        assert "leaving 1 handler(s) still running after the grace period" in server.stderr
    # And nothing was committed: the state is still stale
    assert not (ws / "out/a.txt").exists()
    assert _state(ws, "p.slow", "a") == "stale"


def test_changes_made_while_stopped_are_caught_up_at_start(tmp_path: Path) -> None:
    # Given a workspace served until a and b are processed, then stopped
    ws = chain_workspace(tmp_path / "ws", {"inbox/a.txt": "one\n", "inbox/b.txt": "one two\n"})
    with serving(ws, tmp_path / "logs") as server:
        wait_until(lambda: read(ws / "count/b.txt") and read(ws / "count/a.txt"), "a and b")
        assert server.stop() == 0
    (ws / "runs.log").unlink()
    # When, while it is down, a is modified, b deleted and c added
    (ws / "inbox/a.txt").write_text("one two three four\n")
    (ws / "inbox/b.txt").unlink()
    (ws / "inbox/c.txt").write_text("five six seven\n")
    with serving(ws, tmp_path / "logs") as server:
        # Then the start-up reconcile queued exactly upper a and upper c before ready
        assert "ready: 2 stages, 2 queued" in server.stderr, server.stderr
        wait_until(lambda: read(ws / "count/a.txt") == "4 words\n", "a caught up")
        wait_until(lambda: read(ws / "count/c.txt") == "3 words\n", "c caught up")
        assert server.stop() == 0
    # And b's outputs are left in place (nothing is deleted unless pruned), nothing ran for b
    assert read(ws / "up/b.txt") == "ONE TWO\n"
    done = sorted((r["stage"], r["entity"]) for r in runs(ws))
    assert done == [("count", "a"), ("count", "c"), ("upper", "a"), ("upper", "c")]


def test_dead_state_is_retried_from_the_cli_through_the_running_server(tmp_path: Path) -> None:
    # Given a stage that always fails, with max_attempts = 2
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": FAST_RUNTIME,
            "pipelines/p.toml": FLAKY_PIPELINE,
            "handlers/h.py": FLAKY_HANDLERS,
            "fail.flag": "",
            "inbox/x.txt": "abc\n",
        },
    )
    with serving(ws, tmp_path / "logs") as server:
        # Then the sweep retries it once after its backoff and it ends dead
        wait_until(lambda: _api_counts(server)["flaky"]["dead"] == 1, "x to be dead")
        assert count_runs(ws, "flaky", "x") == 2
        # When the cause is fixed and `eventrunner retry` runs while the server holds the lock
        (ws / "fail.flag").unlink()
        res = cli(ws, "retry", "p.flaky", "x")
        # Then the CLI went through the server's API, and the server ran the state again
        assert res.returncode == 0, res.stderr
        wait_until(lambda: read(ws / "out/x.txt") == "\ncba", "x to succeed")
        assert count_runs(ws, "flaky", "x") == 3
        wait_until(lambda: _api_counts(server)["flaky"]["fresh"] == 1, "x fresh in the API")
        assert server.stop() == 0
    assert _state(ws, "p.flaky", "x") == "fresh"


def test_run_while_serving_goes_through_the_server_and_reports_what_ran(tmp_path: Path) -> None:
    # Given a chain served without a watcher, and a file dropped that it has not been told of
    ws = chain_workspace(tmp_path / "ws", {"inbox/a.txt": "one two\n"})
    with serving(ws, tmp_path / "logs", "--no-watch") as server:
        wait_until(lambda: read(ws / "count/a.txt") == "2 words\n", "a to be processed at start")
        (ws / "inbox/b.txt").write_text("three four five\n")

        # When `eventrunner run` runs while the server holds the lock
        res = cli(ws, "run", "--json")

        # Then it went through the server (no lock fight), which found b, ran both its stages,
        # and answered once idle with what ran
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["mode"] == "server"
        assert (report["executed"], report["succeeded"], report["failed"]) == (2, 2, 0)
        assert report["skipped"] == 0
        assert read(ws / "count/b.txt") == "3 words\n"
        assert count_runs(ws, "upper", "b") == 1 and count_runs(ws, "upper", "a") == 1

        # And `status` while serving is the server's table (it reads no state itself): a file
        # dropped behind this watcher-less server's back is not counted until a rescan
        (ws / "inbox/c.txt").write_text("six\n")
        status = json.loads(cli(ws, "status", "--json").stdout)
        assert status["pipelines"]["p"]["stages"]["count"]["fresh"] == 2
        assert sum(status["pipelines"]["p"]["stages"]["count"].values()) == 2
        assert cli(ws, "status", "--pipeline", "nope").returncode == 2
        # ... and so is `explain` (c is not one of its entities yet; a is)
        assert cli(ws, "explain", "c").returncode == 2
        explained = json.loads(cli(ws, "explain", "a", "--stage", "upper", "--json").stdout)
        assert [(r["stage"], r["state"]) for r in explained["stages"]] == [("p.upper", "fresh")]
        (ws / "inbox/c.txt").unlink()

        # And a held state is reported skipped
        assert cli(ws, "hold", "p.upper", "a").returncode == 0
        held = json.loads(cli(ws, "run", "--json").stdout)
        assert (held["executed"], held["skipped"]) == (0, 1)

        # And an unknown entity is a usage error naming it, with nothing run
        bad = cli(ws, "run", "--entity", "nope")
        assert bad.returncode == 2
        assert "nope" in bad.stderr
        assert server.stop() == 0


def test_a_file_deleted_behind_the_watchers_back_is_found_by_a_rescan_and_pruned(
    tmp_path: Path,
) -> None:
    # Given two entities served without a watcher
    ws = chain_workspace(tmp_path / "ws", {"inbox/a.txt": "one\n", "inbox/b.txt": "two three\n"})
    with serving(ws, tmp_path / "logs", "--no-watch") as server:
        wait_until(lambda: _api_counts(server)["count"]["fresh"] == 2, "both processed")
        # When a source file is deleted and `run` asks the server to check everything
        (ws / "inbox/a.txt").unlink()
        res = cli(ws, "run", "--json")
        assert res.returncode == 0, res.stderr
        # Then the rescan found it gone: a's states are orphaned (outputs kept until prune),
        # b's stay fresh, and nothing ran
        assert json.loads(res.stdout)["executed"] == 0
        counts = _api_counts(server)
        assert (counts["upper"]["orphaned"], counts["upper"]["fresh"]) == (1, 1)
        assert (counts["count"]["orphaned"], counts["count"]["fresh"]) == (1, 1)
        assert read(ws / "count/a.txt") == "1 words\n"

        # When `eventrunner prune` runs while serving, the server prunes exactly a's states
        res = cli(ws, "prune", "--json")
        assert res.returncode == 0, res.stderr
        pruned = {(p["stage"], p["entity"]) for p in json.loads(res.stdout)["pruned"]}
        assert pruned == {("p.upper", "a"), ("p.count", "a")}
        assert read(ws / "count/a.txt") is None and read(ws / "up/a.txt") is None
        assert read(ws / "count/b.txt") == "2 words\n"
        counts = _api_counts(server)
        assert (counts["count"]["orphaned"], counts["count"]["fresh"]) == (0, 1)
        assert server.stop() == 0
