"""What the dashboard shows, read from the runtime: selections of states, keyset pages, groups.

Nothing here walks every state by evaluating it: counts and "which states are in state X"
come from the shared StateTable; only the rows of one page are evaluated. A selection
(stage + state / reason / id / error group / one entity) is what a page filters by and also
what a bulk action runs on, resolved again on the server when the action is confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventrunner.core.errors import UnknownName, UsageError
from eventrunner.core.records import Failure
from eventrunner.core.staleness import STATES, Reason
from eventrunner.run.evaluate import Evaluator
from eventrunner.server.states import StateTable
from eventrunner.state.hashing import hash_bytes

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime

PAGE = 50
REASONS = (
    "MISSING",
    "CODE_CHANGED",
    "PARAMS_CHANGED",
    "INPUT_CHANGED",
    "INPUT_ADDED",
    "INPUT_REMOVED",
    "OUTPUT_MODIFIED",
    "INVALIDATED",
    "UPSTREAM_NOT_FRESH",
    "BACKOFF",
    "DEAD",
    "HELD",
)
SCAN_BUDGET = 2000  # states evaluated per page at most when filtering by reason
_GLOB = re.compile(r"[*?\[]")


async def table(request_states: StateTable, budget: float = 0.25) -> StateTable:
    """The state table, brought up to date if that takes under `budget` seconds; else as it is
    (a full pass at 100,000 states takes seconds: the page shows slightly older counts)."""
    if request_states.full_passes == 0:
        return await request_states.get()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(request_states.get()), budget)
    return request_states


@dataclass(frozen=True)
class Selection:
    """Which states of one stage: by state, reason, id prefix/glob, error group, or one id."""

    stage: str
    state: str | None = None
    reason: str | None = None
    id: str | None = None
    error: str | None = None
    entity: str | None = None

    @classmethod
    def parse(cls, rt: Runtime, data: Mapping[str, str], stage: str | None = None) -> Selection:
        """From query or form fields; UnknownName / UsageError for bad values."""
        q = stage or data.get("stage") or ""
        if q not in rt.ws.graph.stages:
            found = rt.ws.graph.find_stage(q) if q else []
            if len(found) != 1:
                raise UnknownName(f"no stage {q!r}")
            q = found[0]
        state = data.get("state") or None
        if state is not None and state not in STATES:
            raise UsageError(f"unknown state {state!r}")
        reason = data.get("reason") or None
        if reason is not None and reason not in REASONS:
            raise UsageError(f"unknown reason {reason!r}")
        return cls(
            q,
            state,
            reason,
            data.get("id") or None,
            data.get("error") or None,
            data.get("entity") or None,
        )

    def fields(self) -> dict[str, str]:
        """The selection as query / hidden form fields (the stage included)."""
        return {
            k: v
            for k, v in (
                ("stage", self.stage),
                ("state", self.state),
                ("reason", self.reason),
                ("id", self.id),
                ("error", self.error),
                ("entity", self.entity),
            )
            if v
        }

    @property
    def whole_stage(self) -> bool:
        """True when nothing narrows the stage down."""
        return not (self.state or self.reason or self.id or self.error or self.entity)

    def id_test(self) -> Callable[[str], bool] | None:
        """Prefix match, or a glob when the text has * ? or [."""
        text = self.id
        if not text:
            return None
        if _GLOB.search(text):
            return re.compile(fnmatch.translate(text)).match  # type: ignore[return-value]
        return lambda eid: eid.startswith(text)


def candidates(rt: Runtime, table: StateTable, sel: Selection) -> list[str]:
    """Entity ids of the selection without evaluating any state (the reason filter aside)."""
    assert rt.index is not None
    states = table.states.get(sel.stage, {})
    if sel.entity is not None:
        return [sel.entity] if sel.entity in states else []
    ids: Iterable[str] = table.ids(sel.stage, sel.state) if sel.state else states
    test = sel.id_test()
    if test is not None:
        ids = filter(test, ids)
    if sel.error is not None:
        fails, groups = rt.index.failures[sel.stage], FINGERPRINTS
        ids = (e for e in ids if e in fails and groups.of(sel.stage, fails[e]) == sel.error)
    if sel.reason is not None:
        ids = (e for e in ids if states.get(e) != "fresh")  # fresh states have no reasons
    return list(ids)


@dataclass
class Row:
    """One state on a page."""

    entity: str
    state: str
    reasons: tuple[Reason, ...]
    failure: Failure | None


@dataclass
class Page:
    """One keyset page of a selection."""

    rows: list[Row]
    total: int | None  # None when a reason filter left it unknown
    scanned: int = 0
    more_after: bool = False
    more_before: bool = False
    next_after: str | None = None  # where the next page starts (the last id looked at)
    prev_before: str | None = None  # where the previous page ends


def page_of(
    rt: Runtime,
    table: StateTable,
    sel: Selection,
    *,
    after: str | None = None,
    before: str | None = None,
    size: int = PAGE,
) -> Page:
    """Rows ordered by entity id, starting after `after` (or ending before `before`); only
    these rows are evaluated (up to SCAN_BUDGET when a reason filter must look at each)."""
    assert rt.index is not None
    index = rt.index
    ids = candidates(rt, table, sel)
    ev = Evaluator(index)
    backwards = before is not None and after is None

    def row(eid: str) -> Row | None:
        values = index.values_or_none(sel.stage, eid)
        if values is None:
            return None
        v = ev.verdict(sel.stage, eid, values)
        return Row(eid, v.state, v.reasons, index.failures[sel.stage].get(eid))

    if backwards:
        window: Iterable[str] = (e for e in ids if e < before)  # type: ignore[operator]
    else:
        window = (e for e in ids if after is None or e > after)
    if sel.reason is None:
        pick = heapq.nlargest if backwards else heapq.nsmallest
        looked = sorted(pick(size + 1, window))
        extra = len(looked) > size
        looked = looked[-size:] if backwards else looked[:size]
        result = Page([r for r in map(row, looked) if r is not None], len(ids), len(looked))
    else:
        looked = []
        rows: list[Row] = []
        for eid in sorted(window, reverse=backwards):
            if len(rows) == size or len(looked) >= SCAN_BUDGET:
                break
            looked.append(eid)
            found = row(eid)
            if found is not None and any(r.code == sel.reason for r in found.reasons):
                rows.append(found)
        extra = _more(ids, looked, backwards)
        looked.sort()
        result = Page(sorted(rows, key=lambda r: r.entity), None, len(looked))
    if looked:
        result.prev_before, result.next_after = looked[0], looked[-1]
    if backwards:
        result.more_before, result.more_after = extra, True
    else:
        result.more_after, result.more_before = extra, after is not None
    return result


def _more(ids: list[str], looked: list[str], backwards: bool) -> bool:
    """True when ids lie beyond the last one looked at (in the direction of paging)."""
    if not looked:
        return False
    edge = min(looked) if backwards else max(looked)
    return any((e < edge) if backwards else (e > edge) for e in ids)


async def resolve(rt: Runtime, table: StateTable, sel: Selection) -> list[str]:
    """Every entity id of a selection (for a bulk action); with a reason filter each candidate
    is evaluated, yielding to the event loop every few hundred."""
    assert rt.index is not None
    ids = candidates(rt, table, sel)
    if sel.reason is None:
        return ids
    index, out = rt.index, []
    ev = Evaluator(index)
    for n, eid in enumerate(ids, 1):
        values = index.values_or_none(sel.stage, eid)
        if values is not None and any(
            r.code == sel.reason for r in ev.verdict(sel.stage, eid, values).reasons
        ):
            out.append(eid)
        if n % 500 == 0:
            await asyncio.sleep(0)
    return out


# -- failure groups -------------------------------------------------------------------------------
_NORMALISE = [
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),
    (re.compile(r"\b[0-9a-f]{8,}\b"), "…"),
    (re.compile(r"\d+(\.\d+)?"), "#"),
]


class Fingerprints:
    """An error's group: its first line with quoted text, hashes and numbers blurred, so that
    "KeyError: 'a'" and "KeyError: 'b'" group together. Remembered per failure record."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], tuple[str, str, str]] = {}  # -> (error, key, text)

    def describe(self, stage: str, f: Failure) -> tuple[str, str]:
        """(group key, group text) of one failure."""
        memo = self._memo.get((stage, f.entity))
        if memo is not None and memo[0] == f.error:
            return memo[1], memo[2]
        text = (f.error.splitlines() or [""])[0]
        if len(f.entity) >= 3:  # the entity's own id (as text or as its repr) does not count
            text = text.replace(repr(f.entity), "'…'").replace(f.entity, "…")
        for pattern, repl in _NORMALISE:
            text = pattern.sub(repl, text)
        text = text[:200]
        key = hash_bytes(f"{stage}\0{text}".encode())[:12]
        if len(self._memo) > 200_000:
            self._memo.clear()
        self._memo[(stage, f.entity)] = (f.error, key, text)
        return key, text

    def of(self, stage: str, f: Failure) -> str:
        """The group key of one failure."""
        return self.describe(stage, f)[0]


FINGERPRINTS = Fingerprints()


@dataclass
class Group:
    """Failed, dead or held states of one stage sharing an error."""

    stage: str
    key: str  # error fingerprint; "" for the held group
    text: str
    states: dict[str, int] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)
    last: float = 0.0
    total: int = 0


def failure_groups(rt: Runtime, table: StateTable, limit: int = 100) -> list[Group]:
    """Groups by (stage, error), most recent first; held states form one group per stage."""
    assert rt.index is not None
    groups: dict[tuple[str, str], Group] = {}
    for q in rt.ws.graph.order:
        states = table.states.get(q, {})
        for eid, f in rt.index.failures[q].items():
            key, text = FINGERPRINTS.describe(q, f)
            g = groups.get((q, key))
            if g is None:
                g = groups[(q, key)] = Group(q, key, text)
            _add(g, eid, states.get(eid, "failed"), f.last_failed)
        for eid in table.ids(q, "held"):
            g = groups.get((q, ""))
            if g is None:
                g = groups[(q, "")] = Group(q, "", "on manual hold")
            _add(g, eid, "held", 0.0)
    return sorted(groups.values(), key=lambda g: (-g.last, g.stage, g.text))[:limit]


def _add(g: Group, eid: str, state: str, when: float) -> None:
    g.states[state] = g.states.get(state, 0) + 1
    g.total += 1
    g.last = max(g.last, when)
    if len(g.sample) < 5:
        g.sample.append(eid)


def recent_failures(rt: Runtime, n: int = 10) -> list[Failure]:
    """The last `n` failures across stages."""
    assert rt.index is not None
    every = (f for fs in rt.index.failures.values() for f in fs.values())
    return heapq.nlargest(n, every, key=lambda f: f.last_failed)


def stage_counts(table: StateTable, stages: list[str]) -> dict[str, dict[str, int]]:
    """stage -> state -> n, plus "total"."""
    out = table.counts(stages)
    for counts in out.values():
        counts["total"] = sum(counts.values())
    return out
