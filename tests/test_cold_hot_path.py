"""The per-execution work cut for cold throughput (issue 15 point 4) keeps what it replaced.

Attempt-log lines still read back as the attempts they note; results from worker threads reach the loop (now in batches);
the committer's stat of a new output is that file's stat; events are still emitted to whoever
listens. Real files in temp folders, a real event loop and real threads.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

from conftest import Workspace

from eventrunner.run.commit import Commit, Committer
from eventrunner.run.events import Event, EventBus, Queued, Started, Succeeded
from eventrunner.run.session import Session
from eventrunner.run.thread_pool import Mailbox
from eventrunner.state.attempts import AttemptLog
from eventrunner.state.files import temp_path, write_file
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace


def test_attempt_log_lines_read_back_as_the_calls_they_note(tmp_path: Path) -> None:
    # Given calls noted with ids json must escape, one of them returned since
    log = AttemptLog(tmp_path / "attempts.log")
    tricky = 'name=a"b\\c\u00e9\n\U0001f600'
    log.started("p.up", tricky, "k" * 32, 3, 1764590000.123456)
    log.started("p.up", "plain", "k2", 1, 1764590001.5)
    log.returned("p.up", "plain")
    log.started("p.down", "other", "k3", 1, 1764590002.25)
    # When a later process reads the log (this one is cut off, as by a crash)
    found = AttemptLog(tmp_path / "attempts.log").open_at_last_stop()
    # Then the calls not returned are exactly those noted, with every field intact
    got = sorted((a.stage, a.entity, a.key, a.attempt, a.started) for a in found)
    assert got == [
        ("p.down", "other", "k3", 1, 1764590002.25),
        ("p.up", tricky, "k" * 32, 3, 1764590000.123456),
    ]
    # And every line is one JSON array
    for line in (tmp_path / "attempts.log").read_bytes().splitlines():
        assert isinstance(json.loads(line), list)
    log.close()


async def test_calls_posted_from_threads_while_the_loop_is_busy_all_run_on_it_in_order() -> None:
    # Given a mailbox and three threads posting ten calls each
    loop = asyncio.get_running_loop()
    mail = Mailbox()
    got: list[tuple[str, int, bool]] = []
    done = asyncio.Event()

    def note(name: str, i: int) -> None:
        got.append((name, i, threading.current_thread() is threading.main_thread()))
        if len(got) == 30:
            done.set()

    def post_ten(name: str) -> None:
        for i in range(10):
            assert mail.post(loop, note, name, i)

    # When they all post while the loop is held up (this coroutine does not yield meanwhile)
    threads = [threading.Thread(target=post_ten, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert got == []
    await asyncio.wait_for(done.wait(), timeout=10)
    # Then every call ran once, on the loop's thread, each thread's calls in the order posted
    assert len(got) == 30 and all(on_loop for _, _, on_loop in got)
    for name in "abc":
        assert [i for n, i, _ in got if n == name] == list(range(10))


def test_a_call_posted_to_a_closed_loop_is_refused() -> None:
    # Given a loop that has been closed (a run that ended while a handler still ran)
    loop = asyncio.new_event_loop()
    loop.close()
    # When a worker posts its result there
    refused = Mailbox().post(loop, print, "never")
    # Then the post says so (the worker then removes the result's temp files)
    assert refused is False


async def test_the_committer_hands_over_each_new_outputs_stat_after_its_rename(
    tmp_path: Path,
) -> None:
    # Given two outputs written to temp files, to be committed in one group
    root = tmp_path / "data"
    (root / "out").mkdir(parents=True)
    temps = []
    for name in ("a.txt", "b.txt"):
        final = root / "out" / name
        tmp = temp_path(final)
        write_file(tmp, name.encode() * 3)
        temps.append((tmp, final))
    commit = Commit(temps=temps)
    # When they are committed
    async with Committer(Store(tmp_path / "state"), root) as committer:
        await committer.submit(commit)
    # Then each is in place, and the stat handed over is the file's own (what the index's
    # stat cache keys on: size, mtime, inode)
    for tmp, final in temps:
        assert not tmp.exists()
        st, now = commit.stats[os.fspath(final)], os.stat(final)
        assert (st.st_size, st.st_mtime_ns, st.st_ino) == (now.st_size, now.st_mtime_ns, now.st_ino)


def test_a_bus_tells_whether_anyone_listens_and_listeners_still_hear_every_event() -> None:
    # Given a bus with nobody listening
    bus = EventBus()
    assert not bus.listening
    # When a listener subscribes
    heard: list[object] = []
    bus.subscribe(heard.append)
    # Then the bus is listening, and an event emitted reaches it
    assert bus.listening
    bus.emit(Queued(stage="p.s", entity="e"))
    assert [type(e) for e in heard] == [Queued]
    # And a block holding events back counts as listening even with nobody subscribed
    bus.unsubscribe(heard.append)
    assert not bus.listening
    with bus.holding():
        assert bus.listening


async def test_a_session_with_a_listener_hears_each_run_queued_started_and_succeeded(
    echo: Workspace,
) -> None:
    # Given a session with a listener (as `run` has for its progress bar)
    heard: list[Event] = []
    session = Session(load_workspace(echo.root), "run", listener=heard.append)
    await session.start()
    assert session.engine is not None
    await session.engine.wait_idle()
    executed = session.engine.outcome.executed
    await session.close()
    # Then every execution was heard queued, started and succeeded, in that order
    assert executed > 0
    for kind in (Queued, Started, Succeeded):
        assert sum(isinstance(e, kind) for e in heard) == executed, kind
    for e in heard:
        if isinstance(e, Succeeded):
            mine = [
                type(x)
                for x in heard
                if getattr(x, "entity", None) == e.entity and getattr(x, "stage", None) == e.stage
            ]
            assert mine == [Queued, Started, Succeeded], (e.stage, e.entity, mine)
