"""Typed events: one enum of kinds, one small frozen dataclass per kind, one bus to emit them on.

The engine and the runtime say what happened by emitting an event on an `EventBus`; listeners
(the progress bar of `run`, the SSE stream, metrics, the state table, `run` while serving)
match on the class, never on a string. `GET /api/events` sends each event as
`event: KIND` / `data: JSON`, the JSON being `Event.data()`: `kind`, then the fields in the
order the class declares them. The engine's events put `time` second and the runtime's put it
last, as the stream always has; tests/test_events.py pins the bytes of every kind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, Protocol

log = logging.getLogger("eventrunner.events")


class EventKind(StrEnum):
    """What an event reports; its value is the SSE `event:` name."""

    changed = "changed"
    """A file under the data root was added, modified or deleted (the watcher saw it, or a
    rescan found it); `queued` states were queued because of it."""

    webhook = "webhook"
    """A webhook's body was written to its file (the file's own `changed` follows)."""

    queued = "queued"
    """A stale (stage, entity) was queued for a worker."""

    started = "started"
    """A handler started on one (stage, entity); `attempt` counts from 1 per input version."""

    succeeded = "succeeded"
    """A handler's output was committed (the manifest is durable)."""

    failed = "failed"
    """An attempt failed (the handler raised, timed out or its worker died) or its commit did."""

    dead = "dead"
    """A state ran out of attempts (or raised PermanentError): it waits for a manual retry.
    Follows the `failed` event (dead: true) of the same attempt; serve's alert listens for it."""

    ready = "ready"
    """The server finished starting: caught up with what changed while it was down."""

    reloaded = "reloaded"
    """Pipelines or handlers were re-loaded; `changed_stages` have new code or params."""

    reload_failed = "reload_failed"
    """An edited pipeline or handler did not validate; the previous version keeps running."""

    managed = "managed"
    """A management call (invalidate, retry, hold, release) changed states while serving."""

    pruned = "pruned"
    """Orphaned states' outputs and manifests were deleted while serving."""

    dropped = "dropped"
    """Stream-local: this SSE reader was too slow and lost `count` events (never on the bus)."""


def _now() -> float:
    return time.time()


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every event: a kind (per class) and the fields its subclass declares."""

    kind: ClassVar[EventKind]
    # Fields sent only when set (not None): the stream never carried them otherwise.
    optional: ClassVar[tuple[str, ...]] = ()
    _names: ClassVar[dict[type, tuple[str, ...]]] = {}

    def data(self) -> dict[str, Any]:
        """The event as the SSE stream sends it: kind first, then the fields in class order."""
        cls = type(self)
        names = Event._names.get(cls)
        if names is None:
            names = Event._names[cls] = tuple(f.name for f in fields(self))
        out = {"kind": self.kind.value, **{n: getattr(self, n) for n in names}}
        for name in self.optional:
            if out[name] is None:
                del out[name]
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class StateEvent(Event):
    """An event about one (stage, entity): the engine's events, `time` first after `kind`."""

    time: float = field(default_factory=_now)
    stage: str
    entity: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Queued(StateEvent):
    """`reasons`: the reason codes that made the state stale (the history's trigger); sent only
    when known."""

    kind = EventKind.queued
    reasons: tuple[str, ...] = ()

    def data(self) -> dict[str, Any]:
        out = StateEvent.data(self)
        if not self.reasons:
            del out["reasons"]
        else:
            out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Started(StateEvent):
    kind = EventKind.started
    attempt: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Succeeded(StateEvent):
    kind = EventKind.succeeded
    duration_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed(StateEvent):
    """A failed attempt (attempts, dead, retry_at set) or a failed commit (they stay None)."""

    kind = EventKind.failed
    error: str
    attempts: int | None = None
    dead: bool | None = None
    retry_at: float | None = None

    def data(self) -> dict[str, Any]:
        """A failed commit has no attempt count: its event never carried the retry fields."""
        out = StateEvent.data(self)
        if self.attempts is None:
            for name in ("attempts", "dead", "retry_at"):
                del out[name]
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Dead(StateEvent):
    """`attempts` made, `error` the last one's (secrets masked, as in the failure record)."""

    kind = EventKind.dead
    attempts: int
    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Changed(Event):
    """`queued` is set by the watcher's path, `by` ("rescan") by a rescan; each is sent only when set."""

    kind = EventKind.changed
    optional = ("queued", "by")
    path: str
    change: str  # "added", "modified" or "deleted"
    queued: int | None = None
    by: str | None = None
    time: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class Webhook(Event):
    kind = EventKind.webhook
    path: str
    event_id: str
    pipeline: str
    source: str
    entity: str
    time: float = field(default_factory=_now)

    @classmethod
    def of(cls, path: str, event_id: str, meta: Mapping[str, str]) -> Webhook:
        """From an intake record's meta (pipeline, source, entity)."""
        return cls(
            path=path,
            event_id=event_id,
            pipeline=meta.get("pipeline", ""),
            source=meta.get("source", ""),
            entity=meta.get("entity", ""),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Ready(Event):
    kind = EventKind.ready
    time: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reloaded(Event):
    kind = EventKind.reloaded
    changed_stages: list[str]
    time: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReloadFailed(Event):
    kind = EventKind.reload_failed
    problems: list[str]
    time: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class Managed(Event):
    kind = EventKind.managed
    action: str
    time: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class Pruned(Event):
    kind = EventKind.pruned
    states: int
    time: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class Dropped(Event):
    """Written by the SSE stream itself; its data is only the count, as it always was."""

    kind = EventKind.dropped
    count: int

    def data(self) -> dict[str, Any]:
        return {"count": self.count}


class Listener(Protocol):
    """Called with every event, on the event loop's thread; must not block."""

    def __call__(self, event: Event, /) -> None: ...


class Held:
    """Events held back by `EventBus.holding()`: told at the end of the block, `lead` first."""

    def __init__(self) -> None:
        self.leading: list[Event] = []
        self.events: list[Event] = []

    def lead(self, event: Event) -> None:
        """Tell `event` before everything held back (the cause before its effects)."""
        self.leading.append(event)


class EventBus:
    """The one place events are emitted: fans each out to its listeners, in subscription order."""

    def __init__(self, *listeners: Listener) -> None:
        self._listeners: list[Listener] = list(listeners)
        self._held: list[Held] = []

    @contextlib.contextmanager
    def holding(self) -> Iterator[Held]:
        """Hold back what is emitted inside the block and tell it when the block ends, after the
        events given to `Held.lead`: a file change is reported before the `queued` events that
        its handling emitted, though the count it reports is known only afterwards (issue 10.13)."""
        held = Held()
        self._held.append(held)
        try:
            yield held
        finally:
            self._held.remove(held)
            for event in (*held.leading, *held.events):
                self.emit(event)

    @property
    def listening(self) -> bool:
        """Anyone to tell (or a block holding events back): else an emitter may skip building
        an event it would emit per execution."""
        return bool(self._listeners or self._held)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every event from now on."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling `listener` (no error when it was not subscribed)."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def emit(self, event: Event) -> None:
        """Tell every listener; one that raises is logged and the others still hear it."""
        if self._held:
            self._held[-1].events.append(event)
            return
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.kind.value)
