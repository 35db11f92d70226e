"""The runtime in-process: real watchfiles events, real handlers, events observed on the event bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from serve_helpers import (
    FAST_RUNTIME,
    LOG_HELPER,
    chain_workspace,
    count_runs,
    make_workspace,
    read,
    runs,
    until,
)

from eventrunner.server.app import create_app
from eventrunner.service.runtime import Runtime
from eventrunner.service.watch import FileChange
from eventrunner.workspace.load import load_workspace


class Live:
    """A started Runtime plus every event it emitted and every file change the watcher fed it."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.events: list[dict[str, Any]] = []
        self.changes: list[tuple[FileChange, int]] = []  # (change, states it queued)
        rt.events.subscribe(lambda event: self.events.append(event.data()))
        on_change = rt.on_change

        def record(change: FileChange) -> int:
            queued = on_change(change)
            self.changes.append((change, queued))
            return queued

        rt.on_change = record  # type: ignore[method-assign]

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    def idle(self) -> bool:
        engine = self.rt.engine
        assert engine is not None and self.rt.index is not None
        return engine.queue_depth == 0 and not self.rt.index.running and engine._is_idle()


@contextlib.asynccontextmanager
async def running(root: Path) -> AsyncIterator[Live]:
    """Load the workspace, start a Runtime on it, and close it on the way out."""
    async with Runtime(load_workspace(root)) as rt:
        live = Live(rt)
        await rt.start()
        yield live


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


async def _drop_and_wait(ws: Path, name: str, text: str) -> None:
    """A sentinel drop: once its chain is done, everything queued before it is done too."""
    _write(ws / f"inbox/{name}.txt", text)
    expected = f"{len(text.split())} words\n"
    await until(lambda: read(ws / f"count/{name}.txt") == expected, f"sentinel {name}")


async def test_burst_of_writes_to_one_file_coalesces_and_ends_on_the_last_write(
    tmp_path: Path,
) -> None:
    # Given a chain whose first stage takes a while, so writes land while it runs
    ws = chain_workspace(tmp_path / "ws")
    handlers = (ws / "handlers/h.py").read_text()
    (ws / "handlers/h.py").write_text(
        handlers.replace('    _log("upper", ctx, text)\n', '    _log("upper", ctx, text)\n    import time\n    time.sleep(0.15)\n')
    )  # fmt: skip
    async with running(ws) as live:
        # When one source file is written 30 times, in three bursts of ten
        last = ""
        for burst in range(3):
            started = len(live.of("started", stage="p.upper"))
            for i in range(10):
                last = f"burst {burst} write {i} " + "w " * (burst * 10 + i) + "\n"
                _write(ws / "inbox/a.txt", last)
            # The next burst lands while this one's run is going (or after it).
            await until(lambda: len(live.of("started", stage="p.upper")) > started, "a run")  # noqa: B023
        # Then the final outputs reflect the last write
        await until(lambda: read(ws / "count/a.txt") == f"{len(last.split())} words\n", "final")
        await until(live.idle, "idle")
        assert read(ws / "up/a.txt") == last.upper()
        # And far fewer than 30 runs happened, the last one on the last content
        upper_runs = [r for r in runs(ws) if r["stage"] == "upper"]
        assert 1 <= len(upper_runs) <= 6, upper_runs
        assert upper_runs[-1]["text"] == last
        # And no state ever had more than one queued plus one running
        queued: dict[tuple[str, str], int] = {}
        active: dict[tuple[str, str], int] = {}
        for e in live.events:
            key = (e.get("stage", ""), e.get("entity", ""))
            if e["kind"] == "queued":
                queued[key] = queued.get(key, 0) + 1
            elif e["kind"] == "started":
                queued[key] -= 1
                active[key] = active.get(key, 0) + 1
            elif e["kind"] in ("succeeded", "failed"):
                active[key] -= 1
            assert queued.get(key, 0) <= 1 and active.get(key, 0) <= 1, (e, live.events)


async def test_atomic_rename_is_processed_once_and_the_temp_name_never(tmp_path: Path) -> None:
    # Given a source pattern that would match the temp name too
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": FAST_RUNTIME,
            "pipelines/p.toml": """\
                name = "p"
                [sources.drop]
                pattern = "drop/{file}"
                [stages.copy]
                handler = "h:copy"
                inputs  = { data = "drop/{file}" }
                output  = "copied/{file}"
            """,
            "handlers/h.py": LOG_HELPER
            + "\n\ndef copy(ctx, data: str) -> str:\n    _log('copy', ctx, data)\n    return data\n",
            "drop/.keep-folder": "",
        },
    )
    async with running(ws) as live:
        await until(live.idle, "start-up work")
        # When a file is written under a temp name in two parts, then renamed into place
        with open(ws / "drop/x.tmp", "w") as fh:
            fh.write("part one, ")
            fh.flush()
            fh.write("part two\n")
        os.rename(ws / "drop/x.tmp", ws / "drop/x.txt")
        # Then the final name is processed once, with the whole content
        await until(lambda: read(ws / "copied/x.txt") == "part one, part two\n", "copied/x.txt")
        _write(ws / "drop/sentinel.txt", "s\n")
        await until(lambda: read(ws / "copied/sentinel.txt"), "sentinel")
        await until(live.idle, "idle")
        # And the temp name was never processed nor even reported
        assert count_runs(ws, "copy", "x.txt") == 1
        assert not [r for r in runs(ws) if r["entity"] == "x.tmp"]
        assert not (ws / "copied/x.tmp").exists()
        assert "drop/x.tmp" not in {c.relpath for c, _ in live.changes}


async def test_half_written_file_is_processed_only_once_complete(tmp_path: Path) -> None:
    # Given a settle time longer than the writer's pause between its two parts
    runtime = FAST_RUNTIME.replace('settle = "100ms"', 'settle = "400ms"')
    ws = chain_workspace(tmp_path / "ws", runtime=runtime)
    async with running(ws):
        # When a file is written in two parts with a pause shorter than settle
        (ws / "inbox").mkdir()
        with open(ws / "inbox/a.txt", "w") as fh:
            fh.write("first half ")
            fh.flush()
            os.fsync(fh.fileno())
            # The scenario's pause (not a synchronisation): the watcher sees the partial file.
            await asyncio.sleep(0.05)
            fh.write("second half\n")
        # Then the handler saw only the complete content, once
        await until(lambda: read(ws / "count/a.txt") == "4 words\n", "count/a.txt")
        seen = [r["text"] for r in runs(ws) if r["stage"] == "upper"]
        assert seen == ["first half second half\n"]
        assert read(ws / "up/a.txt") == "FIRST HALF SECOND HALF\n"


async def test_own_writes_echoed_by_the_watcher_trigger_nothing(tmp_path: Path) -> None:
    ws = chain_workspace(tmp_path / "ws")
    async with running(ws) as live:
        # When a file is dropped and its chain runs
        await _drop_and_wait(ws, "a", "one two\n")
        # Then the watcher reports eventrunner's own outputs, and they queue nothing
        outputs = {"up/a.txt", "count/a.txt"}
        await until(lambda: outputs <= {c.relpath for c, _ in live.changes}, "the echo of outputs")
        assert all(q == 0 for c, q in live.changes if c.relpath in outputs), live.changes
        # And after an unrelated drop is done, a's stages still ran exactly once each
        await _drop_and_wait(ws, "b", "three\n")
        await until(live.idle, "idle")
        assert count_runs(ws, "upper", "a") == 1
        assert count_runs(ws, "count", "a") == 1
        assert len(live.of("started")) == 4


async def test_handler_edits_rerun_exactly_what_changed_and_bad_edits_keep_the_old_code(
    tmp_path: Path,
) -> None:
    # Given a served chain with two processed entities
    ws = chain_workspace(tmp_path / "ws", {"inbox/a.txt": "hello world\n", "inbox/b.txt": "x y\n"})
    h = ws / "handlers/h.py"
    async with running(ws) as live:
        await until(lambda: read(ws / "count/a.txt") and read(ws / "count/b.txt"), "start-up")
        await until(live.idle, "idle")
        (ws / "runs.log").unlink()

        # When only a comment is added to a handler
        h.write_text(h.read_text().replace("    return text.upper()", "    # a comment\n    return text.upper()"))  # fmt: skip
        await until(lambda: live.of("reloaded"), "reload")
        # Then no stage has a new code identity and nothing re-runs
        assert live.of("reloaded")[0]["changed_stages"] == []
        await _drop_and_wait(ws, "c", "c\n")
        await until(live.idle, "idle")
        assert sorted(r["entity"] for r in runs(ws)) == ["c", "c"]
        (ws / "runs.log").unlink()

        # When upper's body changes so that only a's output changes
        h.write_text(h.read_text().replace("return text.upper()", 'return text.upper().replace("HELLO", "HI THERE")'))  # fmt: skip
        await until(lambda: len(live.of("reloaded")) == 2, "second reload")
        assert live.of("reloaded")[1]["changed_stages"] == ["p.upper"]
        await until(lambda: read(ws / "count/a.txt") == "3 words\n", "a re-run downstream")
        await _drop_and_wait(ws, "d", "d\n")
        await until(live.idle, "idle")
        # Then upper re-ran for every entity, count only where upper's output changed
        done = sorted((r["stage"], r["entity"]) for r in runs(ws))
        assert done == [
            ("count", "a"),
            ("count", "d"),
            ("upper", "a"),
            ("upper", "b"),
            ("upper", "c"),
            ("upper", "d"),
        ]
        assert read(ws / "up/a.txt") == "HI THERE WORLD\n"
        (ws / "runs.log").unlink()

        # When the module gets a syntax error
        h.write_text(h.read_text() + "\ndef broken(:\n")
        await until(lambda: live.of("reload_failed"), "reload_failed")
        # Then it is reported and the previous code keeps processing new drops
        assert live.rt.last_reload_error
        assert any("syntax" in p.lower() for p in live.of("reload_failed")[0]["problems"])
        _write(ws / "inbox/e.txt", "hello e\n")
        await until(lambda: read(ws / "count/e.txt") == "3 words\n", "e processed")
        assert read(ws / "up/e.txt") == "HI THERE E\n"


COUNTED_FAILURES = (
    LOG_HELPER
    + """

def flaky(ctx, text: str) -> str:
    _log("flaky", ctx, text)
    if ctx.entity_id == "never" or ctx.attempt <= 2:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return "ok " + text
"""
)


async def test_failures_are_retried_by_the_sweep_until_success_or_dead(tmp_path: Path) -> None:
    # Given a stage failing its first two attempts (and always for `never`), max_attempts = 3
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": FAST_RUNTIME,
            "pipelines/p.toml": """\
                name = "p"
                [sources.inbox]
                pattern = "inbox/{name}.txt"
                [stages.flaky]
                handler = "h:flaky"
                inputs  = { text = "inbox/{name}.txt" }
                output  = "out/{name}.txt"
                retry   = { max_attempts = 3, backoff = "100ms", max_backoff = "100ms" }
            """,
            "handlers/h.py": COUNTED_FAILURES,
            "inbox/x.txt": "x\n",
            "inbox/never.txt": "n\n",
        },
    )
    async with running(ws) as live:
        # Then x succeeds on its third attempt, each retry started by the sweep after backoff
        await until(lambda: read(ws / "out/x.txt") == "ok x\n", "x to succeed", timeout=10)
        assert [e["attempt"] for e in live.of("started", entity="x")] == [1, 2, 3]
        assert [e["dead"] for e in live.of("failed", entity="x")] == [False, False]
        # And `never` ends dead after three attempts
        await until(lambda: live.of("failed", entity="never", dead=True), "never to be dead")
        assert count_runs(ws, "flaky", "never") == 3
        assert live.rt.index is not None
        assert live.rt.index.failures["p.flaky"]["never"].dead
        # And a further sweep leaves a dead state alone
        await until(live.idle, "idle")
        queued = len(live.of("queued"))
        await live.rt._sweep()
        assert live.idle()
        assert len(live.of("queued")) == queued
        assert count_runs(ws, "flaky", "never") == 3


async def test_cron_job_of_a_generator_reruns_it_and_its_downstream(tmp_path: Path) -> None:
    # Given a generator stage on a cron schedule feeding a copy stage
    ws = make_workspace(
        tmp_path / "ws",
        {
            "eventrunner.toml": FAST_RUNTIME,
            "pipelines/p.toml": """\
                name = "p"
                [stages.gen]
                handler  = "h:gen"
                output   = "gen.txt"
                schedule = "*/5 * * * *"
                [stages.copy]
                handler = "h:copy"
                inputs  = { text = "gen.txt" }
                output  = "copy.txt"
            """,
            "handlers/h.py": LOG_HELPER
            + """

def gen(ctx) -> str:
    _log("gen", ctx)
    return f"tick {RUNS.read_text().count(chr(10))}\\n"


def copy(ctx, text: str) -> str:
    _log("copy", ctx, text)
    return text
""",
        },
    )
    async with running(ws) as live:
        await until(lambda: read(ws / "copy.txt") == "tick 1\n", "the first generation")
        await until(live.idle, "idle")
        # Then the schedule is registered
        assert live.rt._scheduler is not None
        assert "cron:p.gen" in live.rt._scheduler.job_ids()
        # When the cron job fires
        await live.rt._cron_job("p.gen")()
        # Then the generator runs again and its downstream follows the new output
        await until(lambda: read(ws / "copy.txt") == "tick 3\n", "the second generation")
        await until(live.idle, "idle")
        assert [r["stage"] for r in runs(ws)] == ["gen", "copy", "gen", "copy"]


async def test_healthz_answers_at_once_and_readyz_only_after_start(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    ws = chain_workspace(tmp_path / "ws", {"inbox/a.txt": "a b\n"})
    async with Runtime(load_workspace(ws)) as rt:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(rt))
        # Before start: alive but not ready, and the API says so
        assert (await client.get("/healthz")).status == 200
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert await resp.json() == {"status": "starting", "ready": False}
        assert (await client.get("/api/pipelines")).status == 503
        # After start: ready, with the catch-up work already queued or running
        await rt.start()
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert rt.engine is not None and rt.index is not None
        assert rt.engine.queue_depth + len(rt.index.running) + len(rt.engine._tasks) >= 1
        resp = await client.get("/api/pipelines")
        assert resp.status == 200
        body = await resp.json()
        assert set(body["pipelines"]["p"]["stages"]) == {"upper", "count"}


async def test_handler_edits_reload_when_the_data_root_is_a_separate_folder(tmp_path: Path) -> None:
    # Given a workspace whose data lives in data/, apart from handlers/ and pipelines/
    runtime = FAST_RUNTIME.replace("[runtime]", 'data_root = "data"\n\n[runtime]')
    ws = chain_workspace(tmp_path / "ws", {"data/inbox/a.txt": "hello world\n"}, runtime=runtime)
    h = ws / "handlers/h.py"
    async with running(ws) as live:
        await until(lambda: read(ws / "data/count/a.txt"), "start-up")
        await until(live.idle, "idle")

        # When a handler's body changes
        h.write_text(h.read_text().replace("return text.upper()", 'return text.upper() + "!"'))

        # Then the code watcher reloads it and exactly that stage re-runs with the new code
        await until(lambda: live.of("reloaded"), "reload")
        assert live.of("reloaded")[0]["changed_stages"] == ["p.upper"]
        await until(lambda: read(ws / "data/up/a.txt") == "HELLO WORLD\n!", "re-run with new code")
