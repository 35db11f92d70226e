"""The event stream of a real `eventrunner serve`: causes come before their effects (issue
10.13: a `changed` event before the `queued` events it caused)."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import EventStream, chain_workspace, read, serving, wait_until


def test_queued_events_come_after_the_changed_event_that_caused_them(tmp_path: Path) -> None:
    # Given a running server on a two-stage chain and a client on /api/events
    ws = chain_workspace(tmp_path / "ws")
    names = ["a", "b", "c", "d"]
    with serving(ws, tmp_path / "logs") as server, EventStream(server.url or "") as stream:
        # When several files are dropped into the inbox
        (ws / "inbox").mkdir()
        for name in names:
            (ws / f"inbox/{name}.txt").write_text(f"{name} words here\n")
        for name in names:
            wait_until(lambda n=name: read(ws / f"count/{n}.txt") == "3 words\n", f"count/{name}")
        wait_until(lambda: len(stream.of("succeeded")) == 2 * len(names), "every succeeded event")
        # Then each file's `changed` event, counting one queued state, comes before that
        # state's `queued` event, on the wire
        events = list(stream.events)
        for name in names:
            changed = [
                i
                for i, (k, d) in enumerate(events)
                if k == "changed" and d["path"] == f"inbox/{name}.txt"
            ]
            queued = [
                i
                for i, (k, d) in enumerate(events)
                if k == "queued" and (d["stage"], d["entity"]) == ("p.upper", name)
            ]
            assert changed and queued, events
            assert changed[0] < queued[0], events
            assert events[changed[0]][1]["queued"] == 1
            # And its time is not later than the queued event's
            assert events[changed[0]][1]["time"] <= events[queued[0]][1]["time"]
        assert server.stop() == 0
