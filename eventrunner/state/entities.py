"""Which entities a stage has, read from the index's pattern instances (read-only questions).

A part of the Index class, kept apart so that each half reads in one sitting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from eventrunner.core.errors import PatternError
from eventrunner.core.patterns import parse_entity_id
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.state.instances import Instances, Key

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace


class EntityQueries:
    """The Index's entity lookups (a mixin: Index declares the state)."""

    ws: Workspace
    instances: dict[str, Instances]

    def stage_entities(self, qualname: str) -> Iterator[tuple[str, dict[str, str]]]:
        """(entity id, values) of every entity a stage has now, from its driver inputs."""
        stage = self.ws.graph.stages[qualname]
        if not stage.inputs:
            yield entity_id((), {}), {}
            return
        seen: set[Key] = set()
        ev = stage.entity_vars
        for name in stage.drivers:
            inp = stage.input(name)
            single = len(stage.drivers) == 1  # keys of one driver are distinct already
            for key in self.instances[inp.pattern.key].keys(ev):
                if single or key not in seen:
                    if not single:
                        seen.add(key)
                    values = dict(zip(ev, key, strict=True))
                    yield entity_id(ev, values), values

    def entity_values(self, qualname: str, eid: str) -> dict[str, str]:
        """The values of an entity id of a stage (PatternError if it is not one)."""
        names = self.ws.graph.stages[qualname].entity_vars
        if len(names) == 1 and "%" not in eid and "," not in eid and "=" not in eid:
            return {names[0]: eid}
        return parse_entity_id(names, eid)

    def values_or_none(self, qualname: str, eid: str) -> dict[str, str] | None:
        """entity_values, or None for text that is not an entity id of the stage."""
        try:
            return self.entity_values(qualname, eid)
        except PatternError:
            return None

    def stage_entity_ids(self, qualname: str) -> list[str]:
        """The ids stage_entities() gives, without building values (one list copy, usually)."""
        stage = self.ws.graph.stages[qualname]
        if len(stage.drivers) == 1:
            inst = self.instances[stage.input(stage.drivers[0]).pattern.key]
            if tuple(stage.entity_vars) == inst.pattern.variables:
                return list(inst.items)  # same variables in the same order: the same ids
        return [eid for eid, _ in self.stage_entities(qualname)]

    def has_entity(self, qualname: str, values: dict[str, str]) -> bool:
        """True when some driver input still binds this entity."""
        stage = self.ws.graph.stages[qualname]
        if not stage.inputs:
            return True
        return any(
            self.instances[stage.input(d).pattern.key].binds(stage.entity_vars, values)
            for d in stage.drivers
        )
