"""Known instances of one pattern, with lazy projections: the index's memory of which files exist."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping

from eventrunner.core.patterns import Pattern, parse_entity_id
from eventrunner.core.patterns import trusted_entity_id as entity_id

Key = tuple[str, ...]


class Instances:
    """Known instances of one pattern: entity id -> relpath (or None), with lazy projections.

    Values are not stored: they are read back from the entity id when needed (ids are reversible),
    which keeps 100,000s of instances to one dict entry each.
    """

    __slots__ = ("_proj", "_single", "items", "pattern")

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        # relpath None unless it came with the instance (path() joins it from the values).
        self.items: dict[str, str | None] = {}
        self._proj: dict[Key, dict[Key, set[str]]] = {}
        self._single = pattern.variables[0] if len(pattern.variables) == 1 else None

    def values(self, eid: str) -> dict[str, str]:
        """The variable values of an entity id of this pattern."""
        if self._single is not None and "%" not in eid:
            return {self._single: eid}  # the common case: the id is the value itself
        return parse_entity_id(self.pattern.variables, eid)

    def add(self, values: dict[str, str], relpath: str | None = None) -> str:
        """Record an instance; returns its entity id."""
        eid = entity_id(self.pattern.variables, values)
        if eid in self.items:
            return eid
        eid = sys.intern(eid)  # one string per entity, shared with its states' manifests
        self.items[eid] = relpath
        for vars_, groups in self._proj.items():
            groups.setdefault(tuple(values[v] for v in vars_), set()).add(eid)
        return eid

    def path(self, eid: str) -> str:
        """The relpath of a known instance."""
        relpath = self.items[eid]
        return relpath if relpath is not None else self.pattern.join(self.values(eid))

    def discard(self, eid: str) -> bool:
        """Forget an instance; True if it was known."""
        if eid not in self.items:
            return False
        del self.items[eid]
        if self._proj:
            values = self.values(eid)
            for vars_, groups in self._proj.items():
                k = tuple(values[v] for v in vars_)
                members = groups.get(k)
                if members is not None:
                    members.discard(eid)
                    if not members:
                        del groups[k]
        return True

    def projection(self, vars_: Key) -> dict[Key, set[str]]:
        """Instances grouped by their values of `vars_` (built once, then kept up to date)."""
        groups = self._proj.get(vars_)
        if groups is None:
            groups = {}
            for eid in self.items:
                values = self.values(eid)
                groups.setdefault(tuple(values[v] for v in vars_), set()).add(eid)
            self._proj[vars_] = groups
        return groups

    def covers(self, vars_: Key) -> bool:
        """True when `vars_` are all of the pattern's variables (in any order)."""
        return len(vars_) == len(self.pattern.variables) and set(vars_) == set(
            self.pattern.variables
        )

    def binds(self, vars_: Key, values: Mapping[str, str]) -> bool:
        """True when some instance has these values for `vars_` (the hot path of has_entity)."""
        if self.covers(vars_):
            return entity_id(self.pattern.variables, values) in self.items
        return tuple(values[v] for v in vars_) in self.projection(vars_)

    def select(self, vars_: Key, key: Key) -> set[str]:
        """Instances whose `vars_` have the values `key`."""
        if self.covers(vars_):
            # Every variable fixed: at most one instance, found by its id (no projection to keep).
            eid = entity_id(self.pattern.variables, dict(zip(vars_, key, strict=True)))
            return {eid} if eid in self.items else set()
        return self.projection(vars_).get(key, set())

    def keys(self, vars_: Key) -> Iterator[Key]:
        """The distinct values of `vars_` among the instances."""
        if self.covers(vars_):
            if self._single is not None:
                return (
                    (e,) if "%" not in e else (self.values(e)[self._single],) for e in self.items
                )
            return (tuple(vs[v] for v in vars_) for vs in map(self.values, self.items))
        return iter(self.projection(vars_))
