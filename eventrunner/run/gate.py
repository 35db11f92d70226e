"""Which states keep a selection from being up to date, and why: what makes `run` and
`status --check` exit 1, so that either can gate a script (`eventrunner run && deploy`).

A state counts when it is anything but fresh (orphaned states are leftovers `prune` deletes,
not work to do). Each one is reported with its first reason and whether it is held: on hold
itself, or waiting only on held states (`--allow-held` accepts those).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from eventrunner.core.staleness import Verdict
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.planner import Planner, Target
from eventrunner.state.index import Index

IGNORED = ("fresh", "orphaned")
STAMP_MAX = 1000  # a stamp records at most this many; with more, the next run checks afresh

# evaluate.gather names a producer that is not fresh as "stage entity (state)".
_UPSTREAM = re.compile(r"(?P<stage>\S+) (?P<entity>.+) \((?P<state>\w+)\)")


class Gate:
    """Collects the not-fresh states of a selection over one evaluator (verdicts memoised)."""

    def __init__(
        self, index: Index, evaluator: Evaluator | None = None, *, incremental: bool = False
    ) -> None:
        """`incremental`: `evaluator` is the engine's, whose aggregates keep certs of their
        members (run/aggregates.py): an aggregate is checked in O(members changed)."""
        self.index = index
        self.ev = evaluator or Evaluator(index)
        self.incremental = incremental
        self.found: dict[tuple[str, str], dict[str, Any]] = {}
        self._held: dict[tuple[str, str], bool] = {}

    def check(self, targets: Iterable[Target]) -> list[dict[str, Any]]:
        """Evaluate each target and keep those that are not fresh; returns what is new."""
        new = []
        for q, eid, values in targets:
            if (q, eid) in self.found:
                continue
            verdict = self.ev.verdict(q, eid, values, incremental=self.incremental)
            if verdict.state in IGNORED:
                continue
            first = verdict.reasons[0] if verdict.reasons else None
            entry = {
                "stage": q,
                "entity": eid,
                "state": verdict.state,
                "reason": first.message if first else "",
                "held": self._held_only(q, eid, verdict),
            }
            if first is not None and "retry_at" in first.detail:
                entry["retry_at"] = first.detail["retry_at"]  # a failed state's next attempt
            self.found[(q, eid)] = entry
            new.append(entry)
        return new

    def follow(self, selected: Callable[[str, str], bool]) -> None:
        """Check everything below the states found so far (in the selection): a failure leaves
        its descendants waiting, and an incremental run never evaluated those."""
        planner = Planner(self.index)
        todo = list(self.found.values())
        while todo:
            entry = todo.pop()
            values = self.index.values_or_none(entry["stage"], entry["entity"])
            if values is None:
                continue
            below = [t for t in planner.descendants(entry["stage"], values) if selected(t[0], t[1])]
            todo += self.check(below)

    def entries(self) -> list[dict[str, Any]]:
        """What was found, upstream first."""
        order = {q: i for i, q in enumerate(self.index.ws.graph.order)}
        return sorted(self.found.values(), key=lambda e: (order.get(e["stage"], 0), e["entity"]))

    def _held_only(self, q: str, eid: str, verdict: Verdict) -> bool:
        """Held, or waiting only on states that are (transitively) held."""
        key = (q, eid)
        if key not in self._held:
            self._held[key] = False  # the graph is acyclic; this only guards the recursion
            self._held[key] = verdict.state == "held" or (
                verdict.state == "waiting" and self._waits_on_holds(verdict)
            )
        return self._held[key]

    def _waits_on_holds(self, verdict: Verdict) -> bool:
        for reason in verdict.reasons:
            if reason.code != "UPSTREAM_NOT_FRESH" or reason.detail.get("missing"):
                return False  # a missing input is no hold
            for text in reason.detail.get("upstream", ()):
                m = _UPSTREAM.fullmatch(text)
                if m is None or m["stage"] not in self.index.ws.graph.stages:
                    return False  # an output file missing behind a fresh producer
                if m["state"] == "held":
                    continue
                values = self.index.values_or_none(m["stage"], m["entity"])
                if m["state"] != "waiting" or values is None:
                    return False
                upstream = self.ev.verdict(m["stage"], m["entity"], values)
                if not self._held_only(m["stage"], m["entity"], upstream):
                    return False
        return True


def blocking(entries: Iterable[dict[str, Any]], allow_held: bool) -> list[dict[str, Any]]:
    """The entries that make the exit code 1."""
    return [e for e in entries if not (allow_held and e.get("held"))]
