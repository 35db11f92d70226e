"""The stage graph across all pipelines of a workspace: who produces and consumes each pattern."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from eventrunner.core.errors import PatternError, Problem
from eventrunner.core.patterns import Pattern, parse_pattern
from eventrunner.workspace.settings import PipelineSpec, RetryPolicy

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
    retry: RetryPolicy
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


def _parse(text: str, file: str, field_: str, problems: list[Problem]) -> Pattern | None:
    try:
        return parse_pattern(text)
    except PatternError as exc:
        problems.append(Problem(file, field_, f"bad pattern {text!r}: {exc}"))
        return None


def _merge_constraints(
    found: Iterable[tuple[Pattern, str, str]], problems: list[Problem]
) -> dict[str, Pattern]:
    """One pattern per key with every constraint declared anywhere applied."""
    merged: dict[str, Pattern] = {}
    for pat, file, field_ in found:
        have = merged.get(pat.key)
        if have is None:
            merged[pat.key] = pat
            continue
        try:
            merged[pat.key] = have.with_constraints(pat.constraints)
        except PatternError as exc:
            problems.append(Problem(file, field_, str(exc)))
    return merged


def build_graph(
    specs: dict[str, tuple[str, PipelineSpec]], default_retry: RetryPolicy
) -> tuple[Graph, list[Problem]]:
    """Build and check the graph; problems name file, field and reason."""
    problems: list[Problem] = []
    raw: list[tuple[Pattern, str, str]] = []
    stage_pats: dict[str, tuple[dict[str, Pattern], Pattern | None]] = {}
    source_pats: dict[tuple[str, str], Pattern] = {}
    for pname, (file, spec) in specs.items():
        for sname, src in spec.sources.items():
            pat = _parse(src.pattern, file, f"sources.{sname}.pattern", problems)
            if pat:
                raw.append((pat, file, f"sources.{sname}.pattern"))
                source_pats[(pname, sname)] = pat
        for sname, st in spec.stages.items():
            ins: dict[str, Pattern] = {}
            for iname, text in st.inputs.items():
                pat = _parse(text, file, f"stages.{sname}.inputs.{iname}", problems)
                if pat:
                    raw.append((pat, file, f"stages.{sname}.inputs.{iname}"))
                    ins[iname] = pat
            out = _parse(st.output, file, f"stages.{sname}.output", problems)
            if out:
                raw.append((out, file, f"stages.{sname}.output"))
            stage_pats[f"{pname}.{sname}"] = (ins, out)
    merged = _merge_constraints(raw, problems)

    stages: dict[str, Stage] = {}
    producer: dict[str, str] = {}
    for pname, (file, spec) in specs.items():
        for sname, st in spec.stages.items():
            qual = f"{pname}.{sname}"
            ins, out = stage_pats[qual]
            if out is None or len(ins) != len(st.inputs):
                continue
            out = merged[out.key]
            where = f"stages.{sname}"
            if out.key in producer:
                other = stages[producer[out.key]]
                problems.append(
                    Problem(
                        file,
                        f"{where}.output",
                        f"pattern {out.key!r} is also produced by stage {other.qualname} ({other.file})",
                    )
                )
                continue
            stage = _make_stage(
                pname,
                sname,
                st,
                file,
                {k: merged[p.key] for k, p in ins.items()},
                out,
                default_retry,
                problems,
            )
            if stage:
                stages[qual] = stage
                producer[out.key] = qual
    sources: dict[str, Source] = {}
    for (pname, sname), pat in source_pats.items():
        file = specs[pname][0]
        if pat.key in producer:
            problems.append(
                Problem(
                    file,
                    f"sources.{sname}.pattern",
                    f"pattern {pat.key!r} is produced by stage {producer[pat.key]}, so it cannot be a source",
                )
            )
            continue
        if pat.key in sources:
            continue  # two pipelines may declare the same source; the first declaration names it
        sources[pat.key] = Source(
            pname, sname, merged[pat.key], specs[pname][1].sources[sname].webhook
        )
    consumers: dict[str, list[tuple[str, str]]] = {}
    for qual, stage in stages.items():
        for inp in stage.inputs:
            consumers.setdefault(inp.pattern.key, []).append((qual, inp.name))
            if inp.pattern.key not in producer and inp.pattern.key not in sources:
                sources[inp.pattern.key] = Source(stage.pipeline, "", inp.pattern)
    order, depth = _topo(stages, producer, problems)
    stages = {q: _with_depth(s, depth.get(q, 0)) for q, s in stages.items()}
    pipelines: dict[str, list[str]] = {p: [] for p in specs}
    for q in order or list(stages):
        pipelines[stages[q].pipeline].append(q)
    graph = Graph(stages, sources, merged, producer, consumers, order or list(stages), pipelines)
    return graph, problems


def _with_depth(stage: Stage, depth: int) -> Stage:
    return replace(stage, depth=depth)


def _make_stage(
    pname: str,
    sname: str,
    st: Any,
    file: str,
    ins: dict[str, Pattern],
    out: Pattern,
    default_retry: RetryPolicy,
    problems: list[Problem],
) -> Stage | None:
    """Classify variables and check that each output variable is bound somewhere."""
    where = f"stages.{sname}"
    in_vars = {v for p in ins.values() for v in p.variables}
    entity_vars = tuple(v for v in out.variables if v in in_vars)
    fanout_vars = tuple(v for v in out.variables if v not in in_vars)
    inputs = tuple(
        Input(
            name,
            pat,
            tuple(v for v in pat.variables if v in entity_vars),
            tuple(v for v in pat.variables if v not in out.variables),
        )
        for name, pat in ins.items()
    )
    drivers = tuple(i.name for i in inputs if set(entity_vars) <= set(i.pattern.variables))
    if entity_vars and not drivers:
        problems.append(
            Problem(
                file,
                f"{where}.output",
                f"output variables {', '.join(entity_vars)} are not all bound by one input (cross products are not supported)",
            )
        )
        return None
    return Stage(
        pipeline=pname,
        name=sname,
        handler=st.handler,
        inputs=inputs,
        output=out,
        entity_vars=entity_vars,
        fanout_vars=fanout_vars,
        params=dict(st.params),
        timeout=st.timeout,
        retry=st.retry or default_retry,
        priority=st.priority,
        concurrency=st.concurrency,
        schedule=st.schedule,
        version=st.version,
        file=file,
        drivers=drivers,
        resources=dict(st.resources),
    )


def _topo(
    stages: dict[str, Stage], producer: dict[str, str], problems: list[Problem]
) -> tuple[list[str], dict[str, int]]:
    """Kahn's algorithm; reports a cycle with the stages on it."""
    ups = {
        q: {producer[i.pattern.key] for i in s.inputs if i.pattern.key in producer}
        for q, s in stages.items()
    }
    depth: dict[str, int] = {}
    order: list[str] = []
    ready = sorted(q for q, u in ups.items() if not u)
    remaining = {q: set(u) for q, u in ups.items() if u}
    while ready:
        q = ready.pop(0)
        order.append(q)
        depth[q] = max((depth[u] + 1 for u in ups[q]), default=0)
        for r in sorted(remaining):
            remaining[r].discard(q)
            if not remaining[r]:
                del remaining[r]
                ready.append(r)
    if remaining:
        cyc = sorted(remaining)
        st = stages[cyc[0]]
        problems.append(
            Problem(st.file, f"stages.{st.name}", f"cycle between stages: {' -> '.join(cyc)}")
        )
        return [], {}
    return order, depth
