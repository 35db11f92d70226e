"""The stage graph across all pipelines of a workspace: who produces and consumes each pattern."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from eventrunner.core.patterns import Pattern
from eventrunner.core.staleness import RetryRule

StageKind = Literal["map", "fanin", "fanout", "generator"]


@dataclass(frozen=True)
class Input:
    """One named input of a stage."""

    name: str
    pattern: Pattern
    shared: tuple[str, ...]  # variables also in the stage's entity (fixed per run)
    aggregated: tuple[str, ...]  # variables not in the output: fan-in over them


@dataclass(frozen=True)
class Source:
    """A pattern no stage produces: data from outside."""

    pipeline: str
    name: str
    pattern: Pattern
    webhook: Any = None  # WebhookSpec | None


@dataclass(frozen=True)
class Stage:
    """One stage: handler, inputs, output, policies."""

    pipeline: str
    name: str
    handler: str
    inputs: tuple[Input, ...]
    output: Pattern
    entity_vars: tuple[str, ...]  # output variables bound by inputs, in output order
    fanout_vars: tuple[str, ...]  # output variables bound by no input
    params: dict[str, Any]
    timeout: float | None
    retry: RetryRule
    priority: int
    concurrency: int | None
    schedule: str | None
    version: str | None
    file: str
    depth: int = 0
    drivers: tuple[str, ...] = field(default=())  # inputs whose variables cover entity_vars
    resources: dict[str, float] = field(default_factory=dict)  # Dask worker resources per call

    @property
    def qualname(self) -> str:
        """Unique stage id across the workspace: "pipeline.stage"."""
        return f"{self.pipeline}.{self.name}"

    @property
    def kind(self) -> StageKind:
        """map, fanin, fanout or generator (fan-out wins over fan-in when both apply)."""
        if not self.inputs:
            return "generator"
        if self.fanout_vars:
            return "fanout"
        if any(i.aggregated for i in self.inputs):
            return "fanin"
        return "map"

    def input(self, name: str) -> Input:
        """The input called `name`."""
        for inp in self.inputs:
            if inp.name == name:
                return inp
        raise KeyError(name)


@dataclass
class Graph:
    """Stages and sources of every pipeline, with producer/consumer lookups."""

    stages: dict[str, Stage]
    sources: dict[str, Source]  # by pattern key
    patterns: dict[str, Pattern]  # every pattern by key, constraints merged
    producer: dict[str, str]  # pattern key -> stage qualname
    consumers: dict[str, list[tuple[str, str]]]  # pattern key -> [(stage qualname, input name)]
    order: list[str]  # stage qualnames, upstream first
    pipelines: dict[str, list[str]]  # pipeline -> stage qualnames

    def downstream(self, qualname: str) -> list[str]:
        """Stages consuming this stage's output, directly."""
        key = self.stages[qualname].output.key
        return sorted({s for s, _ in self.consumers.get(key, [])})

    def upstream(self, qualname: str) -> list[str]:
        """Stages producing this stage's inputs, directly."""
        st = self.stages[qualname]
        return sorted(
            {self.producer[i.pattern.key] for i in st.inputs if i.pattern.key in self.producer}
        )

    def closure_downstream(self, qualname: str) -> list[str]:
        """Every stage reachable downstream, upstream-first order."""
        seen: set[str] = set()
        todo = [qualname]
        while todo:
            for nxt in self.downstream(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return [s for s in self.order if s in seen]

    def find_stage(self, name: str, pipeline: str | None = None) -> list[str]:
        """Stage qualnames matching "stage", "pipeline.stage", optionally within a pipeline."""
        if name in self.stages and (pipeline is None or self.stages[name].pipeline == pipeline):
            return [name]
        return [
            q for q, s in self.stages.items() if s.name == name and pipeline in (None, s.pipeline)
        ]
