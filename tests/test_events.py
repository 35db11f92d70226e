"""Typed events: every kind's SSE bytes are pinned, and the bus keeps going past a bad listener."""

from __future__ import annotations

import logging

import pytest

from eventrunner.run import events as ev
from eventrunner.server.events import sse_frame

T = 1700000000.25

# The stream's bytes for each kind, as the untyped dicts sent them before events were typed:
# the engine's events put "time" right after "kind", the runtime's put it last.
PINNED: list[tuple[ev.Event, str]] = [
    (
        ev.Queued(stage="p.s", entity="a", time=T),
        '{"kind": "queued", "time": 1700000000.25, "stage": "p.s", "entity": "a"}',
    ),
    (
        ev.Started(stage="p.s", entity="a", attempt=2, time=T),
        '{"kind": "started", "time": 1700000000.25, "stage": "p.s", "entity": "a", "attempt": 2}',
    ),
    (
        ev.Succeeded(stage="p.s", entity="a", duration_s=0.012, time=T),
        '{"kind": "succeeded", "time": 1700000000.25, "stage": "p.s", "entity": "a",'
        ' "duration_s": 0.012}',
    ),
    (
        ev.Failed(
            stage="p.s",
            entity="a",
            error="ValueError: no",
            attempts=3,
            dead=False,
            retry_at=1700000030.5,
            time=T,
        ),
        '{"kind": "failed", "time": 1700000000.25, "stage": "p.s", "entity": "a",'
        ' "error": "ValueError: no", "attempts": 3, "dead": false, "retry_at": 1700000030.5}',
    ),
    (
        ev.Failed(stage="p.s", entity="a", error="E", attempts=1, dead=True, time=T),
        '{"kind": "failed", "time": 1700000000.25, "stage": "p.s", "entity": "a",'
        ' "error": "E", "attempts": 1, "dead": true, "retry_at": null}',
    ),
    (
        ev.Failed(stage="p.s", entity="a", error="commit failed: disk full", time=T),
        '{"kind": "failed", "time": 1700000000.25, "stage": "p.s", "entity": "a",'
        ' "error": "commit failed: disk full"}',
    ),
    (
        ev.Dead(stage="p.s", entity="a", attempts=3, error="ValueError: no", time=T),
        '{"kind": "dead", "time": 1700000000.25, "stage": "p.s", "entity": "a", "attempts": 3,'
        ' "error": "ValueError: no"}',
    ),
    (
        ev.Changed(path="in/a.txt", change="modified", queued=2, time=T),
        '{"kind": "changed", "path": "in/a.txt", "change": "modified", "queued": 2,'
        ' "time": 1700000000.25}',
    ),
    (
        ev.Changed(path="in/a.txt", change="deleted", by="rescan", time=T),
        '{"kind": "changed", "path": "in/a.txt", "change": "deleted", "by": "rescan",'
        ' "time": 1700000000.25}',
    ),
    (
        ev.Webhook(path="logs/a.md", event_id="e1", pipeline="p", source="s", entity="a", time=T),
        '{"kind": "webhook", "path": "logs/a.md", "event_id": "e1", "pipeline": "p",'
        ' "source": "s", "entity": "a", "time": 1700000000.25}',
    ),
    (ev.Ready(time=T), '{"kind": "ready", "time": 1700000000.25}'),
    (
        ev.Reloaded(changed_stages=["p.s"], time=T),
        '{"kind": "reloaded", "changed_stages": ["p.s"], "time": 1700000000.25}',
    ),
    (
        ev.ReloadFailed(problems=["pipelines/p.toml: stages.s: bad"], time=T),
        '{"kind": "reload_failed", "problems": ["pipelines/p.toml: stages.s: bad"],'
        ' "time": 1700000000.25}',
    ),
    (
        ev.Managed(action="hold", time=T),
        '{"kind": "managed", "action": "hold", "time": 1700000000.25}',
    ),
    (ev.Pruned(states=4, time=T), '{"kind": "pruned", "states": 4, "time": 1700000000.25}'),
    (ev.Dropped(count=7), '{"count": 7}'),
]


@pytest.mark.parametrize(("event", "data"), PINNED, ids=lambda v: getattr(v, "kind", ""))
def test_each_event_kind_is_sent_on_the_stream_with_the_same_bytes_as_before(
    event: ev.Event, data: str
) -> None:
    assert sse_frame(event) == f"event: {event.kind.value}\ndata: {data}\n\n".encode()


def test_every_event_kind_has_a_pinned_frame() -> None:
    assert {event.kind for event, _ in PINNED} == set(ev.EventKind)


def test_webhook_event_takes_its_fields_from_the_intake_record_meta() -> None:
    event = ev.Webhook.of("logs/a.md", "e1", {"source": "s", "entity": "a", "pipeline": "p"})

    assert (event.pipeline, event.source, event.entity) == ("p", "s", "a")


def test_events_are_frozen() -> None:
    event = ev.Queued(stage="p.s", entity="a")

    with pytest.raises(AttributeError):
        event.stage = "other"  # type: ignore[misc]


def test_a_failing_listener_is_logged_and_the_others_still_hear_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bus whose first listener raises
    heard: list[ev.Event] = []

    def broken(event: ev.Event) -> None:
        raise RuntimeError("listener bug")

    bus = ev.EventBus(broken, heard.append)

    # When an event is emitted
    with caplog.at_level(logging.ERROR, logger="eventrunner.events"):
        bus.emit(ev.Ready())

    # Then the second listener heard it and the failure was logged with the kind
    assert [e.kind for e in heard] == [ev.EventKind.ready]
    assert "event listener failed on ready" in caplog.text


def test_an_unsubscribed_listener_hears_nothing_more() -> None:
    heard: list[ev.Event] = []
    bus = ev.EventBus()
    bus.subscribe(heard.append)
    bus.emit(ev.Ready())
    bus.unsubscribe(heard.append)
    bus.unsubscribe(heard.append)  # twice is fine

    bus.emit(ev.Ready())

    assert len(heard) == 1


def test_events_emitted_while_holding_are_told_after_the_leading_event() -> None:
    # Given a bus with a listener, and a block holding events back
    heard: list[str] = []
    bus = ev.EventBus(lambda event: heard.append(event.kind.value))
    with bus.holding() as held:
        # When an effect is emitted before its cause is known, and the cause leads
        bus.emit(ev.Queued(stage="p.s", entity="a"))
        assert heard == []
        held.lead(ev.Changed(path="in/a.txt", change="added", queued=1))
    # Then the cause is heard first, then the effect
    assert heard == ["changed", "queued"]
    bus.emit(ev.Ready())
    assert heard == ["changed", "queued", "ready"]
