"""Which (stage, entity) pairs an event affects: found through the stage graph and the index.

The O(affected) half of the engine: a changed file, a committed output or a vanished instance
is mapped to the states that read it, without scanning the workspace. `all_targets` is the one
O(workspace) path (full runs and reconcile).
"""

from __future__ import annotations

from collections.abc import Iterator

from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.state.index import Index

Target = tuple[str, str, dict[str, str]]  # (stage qualname, entity id, values)


class Planner:
    """Maps events to targets over one index (which it keeps up to date for source changes)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.graph = index.ws.graph

    def all_targets(self) -> list[Target]:
        """Every (stage, entity) of the workspace, upstream first."""
        return list(self.iter_targets())

    def iter_targets(self, stages: list[str] | None = None) -> Iterator[Target]:
        """all_targets() one at a time, upstream first, safe to interleave with events (each
        stage's ids are copied first; values are built as they are reached)."""
        for q in self.graph.order:
            if stages is None or q in stages:
                for eid in self.index.stage_entity_ids(q):
                    yield q, eid, self.index.entity_values(q, eid)

    def downstream_of(self, pattern_key: str, values: dict[str, str]) -> list[Target]:
        """(stage, entity) pairs that read one instance of a pattern."""
        out: list[Target] = []
        g = self.graph
        for q, iname in g.consumers.get(pattern_key, []):
            stage = g.stages[q]
            inp = stage.input(iname)
            ev = stage.entity_vars
            if set(ev) <= set(inp.pattern.variables):
                ent = {v: values[v] for v in ev}
                out.append((q, entity_id(ev, ent), ent))
                continue
            # The input fixes only some entity variables (e.g. a shared config file): every
            # entity agreeing on those is affected, found through a driver's projection.
            key = tuple(values[v] for v in inp.shared)
            seen: set[str] = set()
            for d in stage.drivers:
                inst = self.index.instances[stage.input(d).pattern.key]
                for member in inst.select(inp.shared, key):
                    mv = inst.values(member)
                    ent = {v: mv[v] for v in ev}
                    eid = entity_id(ev, ent)
                    if eid not in seen:
                        seen.add(eid)
                        out.append((q, eid, ent))
        return out

    def descendants(self, qualname: str, values: dict[str, str]) -> list[Target]:
        """Every state that reads one state's output, directly or through other stages."""
        out: list[Target] = []
        seen: set[tuple[str, str]] = set()
        frontier = [(qualname, values)]
        while frontier:
            q, ent = frontier.pop()
            stage = self.graph.stages[q]
            if stage.fanout_vars:
                # The output instances are the items this state produced.
                m = self.index.manifests[q].get(entity_id(stage.entity_vars, ent))
                pattern = self.index.instances[stage.output.key].pattern
                items = [pattern.match(rel) for rel in (m.output_paths if m else ())]
            else:
                items = [ent]  # the output's variables are the entity's
            for item in items:
                for t in self.downstream_of(stage.output.key, item) if item is not None else ():
                    if (t[0], t[1]) not in seen:
                        seen.add((t[0], t[1]))
                        out.append(t)
                        frontier.append((t[0], t[2]))
        return out

    def concerned_by(self, relpath: str) -> list[Target]:
        """The states a change of this file concerns (its producer and its readers), without
        updating the index (read-only: the state table uses it after the fact)."""
        out: list[Target] = []
        for key, pattern in self.graph.patterns.items():
            values = pattern.match(relpath)
            if values is None:
                continue
            producer = self.graph.producer.get(key)
            if producer is not None:
                names = self.graph.stages[producer].entity_vars
                ent = {v: values[v] for v in names}
                out.append((producer, entity_id(names, ent), ent))
            out.extend(self.downstream_of(key, values))
        return out

    def targets_for_change(self, kind: str, relpath: str) -> tuple[list[Target], bool]:
        """What one changed file affects (updating source instances); also whether it is a source."""
        targets: list[Target] = []
        g = self.graph
        source_hit = False
        for key, pattern in g.patterns.items():
            values = pattern.match(relpath)
            if values is None:
                continue
            producer = g.producer.get(key)
            if producer is not None:
                # An output changed or vanished: its producer decides (our own writes match the
                # index, so their echo comes out fresh and triggers nothing).
                stage = g.stages[producer]
                ent = {v: values[v] for v in stage.entity_vars}
                targets.append((producer, entity_id(stage.entity_vars, ent), ent))
                if kind != "deleted":
                    targets.extend(self.downstream_of(key, values))
                continue
            source_hit = True
            if kind == "deleted":
                self.index.source_vanished(key, values, relpath)
                targets.extend(self.removed_targets(key, values))
            else:
                self.index.source_appeared(key, values, relpath)
                targets.extend(self.downstream_of(key, values))
        return targets, source_hit

    def removed_targets(self, pattern_key: str, values: dict[str, str]) -> list[Target]:
        """Targets affected by an instance that disappeared, following entities that vanish with it."""
        out: list[Target] = []
        for q, eid, ent in self.downstream_of(pattern_key, values):
            out.append((q, eid, ent))
            stage = self.graph.stages[q]
            if not stage.fanout_vars and not self.index.has_entity(q, ent):
                out.extend(self.removed_targets(stage.output.key, ent))
        return out
