"""A bounded journal of recent executions (trigger, start, duration, outcome, output hash).

Fed by the runtime's events: `queued` carries the reasons a state was found stale (the
trigger), `started` the attempt, `succeeded` / `failed` the outcome. Entries are kept in memory
(the newest `limit`) and appended to `.eventrunner/history.jsonl` about once a second, so a
restart keeps them; the file is compacted to the newest `limit` lines when it grows past twice
that. History is a view of what happened, not state: a crash may lose its last second, never a
state's correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eventrunner.state.files import atomic_write
from eventrunner.state.hashing import combine
from eventrunner.state.index import Index

log = logging.getLogger("eventrunner.history")

FILE = "history.jsonl"
LIMIT = 10_000
OUTCOMES = ("succeeded", "failed", "dead")
_PENDING_MAX = 100_000  # triggers of queued states not started yet (a reload drops its queue)


@dataclass
class Execution:
    """One finished execution of one (stage, entity)."""

    seq: int
    stage: str
    entity: str
    trigger: str
    attempt: int
    started: float
    duration_s: float
    outcome: str  # succeeded | failed | dead
    error: str | None = None
    output_hash: str | None = None
    outputs: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain data for the journal file and the API."""
        return asdict(self)


def _get(event: Any, name: str) -> Any:
    # Events are dicts today; typed event objects expose the same names as attributes.
    return event.get(name) if isinstance(event, dict) else getattr(event, name, None)


def output_hash(outputs: dict[str, str]) -> str | None:
    """The output's content hash; for several outputs (fan-out), one hash over all of them."""
    if not outputs:
        return None
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    return combine(*(f"{p}\0{h}" for p, h in sorted(outputs.items())))


class History:
    """The journal: record from events, query newest first, persist in the background."""

    def __init__(
        self,
        path: Path,
        *,
        limit: int = LIMIT,
        index: Callable[[], Index | None] = lambda: None,
        flush_every: float = 1.0,
    ) -> None:
        self.path = path
        self.limit = limit
        self.flush_every = flush_every
        self._index = index
        self.entries: deque[Execution] = deque(maxlen=limit)
        self._seq = 0
        self._triggers: dict[tuple[str, str], str] = {}
        self._started: dict[tuple[str, str], tuple[float, int, str]] = {}
        self._unsaved: list[Execution] = []
        self._lines_on_disk = 0

    # -- recording -------------------------------------------------------------------------------
    def on_event(self, event: Any) -> None:
        """A listener on the runtime's EventBus."""
        kind = _get(event, "kind")
        if kind == "reloaded":
            self._triggers.clear()  # the old engine's queue is gone
            return
        stage, entity = _get(event, "stage"), _get(event, "entity")
        if not isinstance(stage, str) or not isinstance(entity, str):
            return
        key = (stage, entity)
        if kind == "queued":
            if len(self._triggers) >= _PENDING_MAX:
                self._triggers.pop(next(iter(self._triggers)))
            reasons = _get(event, "reasons") or []
            self._triggers[key] = ", ".join(dict.fromkeys(str(r) for r in reasons))
        elif kind == "started":
            attempt = int(_get(event, "attempt") or 1)
            self._started[key] = (
                float(_get(event, "time") or 0.0),
                attempt,
                self._triggers.pop(key, ""),
            )
        elif kind in ("succeeded", "failed"):
            self._finish(key, kind, event)

    def _finish(self, key: tuple[str, str], kind: str, event: Any) -> None:
        started, attempt, trigger = self._started.pop(key, (0.0, 1, ""))
        now = float(_get(event, "time") or started)
        if attempt > 1:
            trigger = f"{trigger} (retry {attempt})" if trigger else f"retry {attempt}"
        entry = Execution(
            seq=self._seq + 1,
            stage=key[0],
            entity=key[1],
            trigger=trigger or "-",
            attempt=attempt,
            started=started or now,
            duration_s=round(max(0.0, now - started) if started else 0.0, 6),
            outcome="dead" if kind == "failed" and _get(event, "dead") else kind,
        )
        if kind == "succeeded":
            entry.duration_s = float(_get(event, "duration_s") or entry.duration_s)
            idx = self._index()
            ms = idx.manifests.get(key[0]) if idx is not None else None
            m = ms.get(key[1]) if ms is not None else None
            if m is not None:
                outputs = m.outputs
                entry.output_hash, entry.outputs = output_hash(outputs), len(outputs)
        else:
            error = str(_get(event, "error") or "")
            entry.error = (error.splitlines() or [""])[0][:300]
        self._seq = entry.seq
        self.entries.append(entry)
        self._unsaved.append(entry)

    # -- reading ---------------------------------------------------------------------------------
    def query(
        self,
        *,
        stages: set[str] | None = None,
        entity: str | None = None,
        outcome: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[Execution]:
        """Newest first; `before` is a seq (the next page starts below the last one shown)."""
        out: list[Execution] = []
        for e in reversed(self.entries):
            if before is not None and e.seq >= before:
                continue
            if stages is not None and e.stage not in stages:
                continue
            if entity is not None and e.entity != entity:
                continue
            if outcome is not None and e.outcome != outcome:
                continue
            out.append(e)
            if len(out) >= limit:
                break
        return out

    # -- persistence -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read the journal file (a torn last line, from a crash, is skipped)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        if raw and not raw.endswith(b"\n"):
            # A line torn by a crash: cut it off, or the next append would extend it.
            raw = raw[: raw.rfind(b"\n") + 1]
            os.truncate(self.path, len(raw))
        lines = raw.splitlines()
        self._lines_on_disk = len(lines)
        fields = Execution.__dataclass_fields__
        recorded_meanwhile = list(self.entries)  # events that came before the file was read
        self.entries.clear()
        self._seq = 0
        for line in lines[-self.limit :]:
            try:
                data = json.loads(line)
                entry = Execution(**{k: data[k] for k in fields if k in data})
            except (ValueError, TypeError):
                continue
            self.entries.append(entry)
            self._seq = max(self._seq, entry.seq)
        for entry in recorded_meanwhile:
            self._seq += 1
            entry.seq = self._seq
            self.entries.append(entry)

    def flush(self) -> None:
        """Append what was recorded since the last flush (compacting when the file grew too long)."""
        self._write(*self._take())

    def _take(self) -> tuple[list[Execution], bool]:
        """On the loop: what to write, and whether to rewrite the whole file instead."""
        batch, self._unsaved = self._unsaved, []
        if self._lines_on_disk + len(batch) > 2 * self.limit:
            return list(self.entries), True
        return batch, False

    def _write(self, entries: list[Execution], whole: bool) -> None:
        """In a thread: append the batch, or replace the file with the newest entries."""
        data = "".join(json.dumps(e.to_json()) + "\n" for e in entries).encode()
        if whole:
            atomic_write(self.path, data, durable=False)
            self._lines_on_disk = len(entries)
            return
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self._lines_on_disk += len(entries)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            if self._unsaved:
                try:
                    await asyncio.to_thread(self._write, *self._take())
                except OSError as exc:
                    log.error("could not write the execution history: %s", exc)

    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: load, flush every second, flush at the end."""
        await asyncio.to_thread(self.load)
        task = asyncio.create_task(self._flush_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                self.flush()
            except OSError as exc:
                log.error("could not write the execution history: %s", exc)

    def __iter__(self) -> Iterator[Execution]:
        return iter(self.entries)
