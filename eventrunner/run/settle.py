"""Aggregates wait for their members to settle, so a fan-in over N members is checked once.

Without this, every committed member re-considered the aggregate, and checking an aggregate
walks all N members: O(N) per commit, O(N^2) per build (issue 15). A stage reading an
aggregated input is instead held back while any stage upstream of it has work queued, running
or committing, and considered once when the last of that work is done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from eventrunner.core.graph import Graph

Target = tuple[str, str, dict[str, str]]


class Settling:
    """Per-stage counts of work in flight, and the aggregate targets waiting on them."""

    def __init__(self, graph: Graph) -> None:
        self._upstream: dict[str, frozenset[str]] = {
            q: frozenset(_closure_upstream(graph, q))
            for q, stage in graph.stages.items()
            if any(inp.aggregated for inp in stage.inputs)
        }
        # stage -> the aggregates it feeds (directly or not)
        self._feeds: dict[str, list[str]] = {}
        for agg, ups in self._upstream.items():
            for up in ups:
                self._feeds.setdefault(up, []).append(agg)
        self._busy: Counter[str] = Counter()
        self._waiting: dict[str, dict[str, dict[str, str]]] = {}  # stage -> eid -> values

    @property
    def waiting(self) -> int:
        """Aggregate targets held back."""
        return sum(len(t) for t in self._waiting.values())

    def hold(self, q: str, eid: str, values: dict[str, str]) -> bool:
        """Keep (q, eid) back if q aggregates and work upstream of it is still in flight."""
        ups = self._upstream.get(q)
        if ups is None or not any(self._busy[u] for u in ups):
            return False
        self._waiting.setdefault(q, {})[eid] = values
        return True

    def started(self, q: str) -> None:
        """One more state of stage q is queued (it stays in flight until done())."""
        self._busy[q] += 1

    def done(self, q: str) -> list[Target]:
        """A state of stage q left flight (committed or failed): the aggregates now settled."""
        if self._busy[q] > 0:
            self._busy[q] -= 1
        if self._busy[q]:
            return []
        out: list[Target] = []
        for agg in self._feeds.get(q, ()):
            if agg in self._waiting and not any(self._busy[u] for u in self._upstream[agg]):
                out.extend((agg, eid, v) for eid, v in self._waiting.pop(agg).items())
        return out

    def release_all(self) -> list[Target]:
        """Every held target (the engine went idle: nothing upstream can still be in flight)."""
        out = [(q, eid, v) for q, t in self._waiting.items() for eid, v in t.items()]
        self._waiting.clear()
        self._busy.clear()
        return out


def _closure_upstream(graph: Graph, q: str) -> Iterable[str]:
    seen: set[str] = set()
    todo = list(graph.upstream(q))
    while todo:
        u = todo.pop()
        if u not in seen:
            seen.add(u)
            todo.extend(graph.upstream(u))
    return seen
