"""Build the stage graph from the pipeline files' specs, reporting every problem found."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from eventrunner.core.errors import PatternError, Problem
from eventrunner.core.graph import Graph, Input, Source, Stage
from eventrunner.core.patterns import Pattern, parse_pattern
from eventrunner.core.reserved import Reserved, pattern_reason
from eventrunner.workspace.overlap import shared_path
from eventrunner.workspace.settings import RetryPolicy

if TYPE_CHECKING:
    from eventrunner.workspace.specs import PipelineSpec


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


Found = list[tuple[Pattern, str, str]]  # every parsed pattern with its file and field
StagePatterns = dict[str, tuple[dict[str, Pattern], Pattern | None]]
SourcePatterns = dict[tuple[str, str], Pattern]


def build_graph(
    specs: dict[str, tuple[str, PipelineSpec]],
    default_retry: RetryPolicy,
    reserved: Reserved = (),
) -> tuple[Graph, list[Problem]]:
    """Build and check the graph; problems name file, field and reason. `reserved`: the
    workspace's own paths relative to the data root, which no pattern may be able to name."""
    problems: list[Problem] = []
    raw, stage_pats, source_pats = _parse_all(specs, problems)
    merged = _merge_constraints(raw, problems)
    _check_reserved(raw, merged, reserved, problems)
    stages, producer = _stages(specs, stage_pats, merged, default_retry, problems)
    sources = _sources(specs, source_pats, merged, producer, problems)
    consumers: dict[str, list[tuple[str, str]]] = {}
    for qual, stage in stages.items():
        for inp in stage.inputs:
            consumers.setdefault(inp.pattern.key, []).append((qual, inp.name))
            if inp.pattern.key not in producer and inp.pattern.key not in sources:
                sources[inp.pattern.key] = Source(stage.pipeline, "", inp.pattern)
    problems += _overlaps(stages, sources)
    order, depth = _topo(stages, producer, problems)
    stages = {q: _with_depth(s, depth.get(q, 0)) for q, s in stages.items()}
    pipelines: dict[str, list[str]] = {p: [] for p in specs}
    for q in order or list(stages):
        pipelines[stages[q].pipeline].append(q)
    graph = Graph(stages, sources, merged, producer, consumers, order or list(stages), pipelines)
    return graph, problems


def _parse_all(
    specs: dict[str, tuple[str, PipelineSpec]], problems: list[Problem]
) -> tuple[Found, StagePatterns, SourcePatterns]:
    """Every pattern of every source and stage, parsed (a bad one is a problem, left out)."""
    raw: Found = []
    stage_pats: StagePatterns = {}
    source_pats: SourcePatterns = {}
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
    return raw, stage_pats, source_pats


def _stages(
    specs: dict[str, tuple[str, PipelineSpec]],
    stage_pats: StagePatterns,
    merged: dict[str, Pattern],
    default_retry: RetryPolicy,
    problems: list[Problem],
) -> tuple[dict[str, Stage], dict[str, str]]:
    """The stages whose patterns parsed, and which stage produces each output pattern."""
    stages: dict[str, Stage] = {}
    producer: dict[str, str] = {}
    for pname, (file, spec) in specs.items():
        for sname, st in spec.stages.items():
            qual = f"{pname}.{sname}"
            ins, out = stage_pats[qual]
            if out is None or len(ins) != len(st.inputs):
                continue
            out = merged[out.key]
            if out.key in producer:
                other = stages[producer[out.key]]
                problems.append(
                    Problem(
                        file,
                        f"stages.{sname}.output",
                        f"pattern {out.key!r} is also produced by stage {other.qualname} ({other.file})",
                    )
                )
                continue
            patterns = {k: merged[p.key] for k, p in ins.items()}
            stage = _make_stage(pname, sname, st, file, patterns, out, default_retry, problems)
            if stage:
                stages[qual] = stage
                producer[out.key] = qual
    return stages, producer


def _sources(
    specs: dict[str, tuple[str, PipelineSpec]],
    source_pats: SourcePatterns,
    merged: dict[str, Pattern],
    producer: dict[str, str],
    problems: list[Problem],
) -> dict[str, Source]:
    """The declared sources; a pattern a stage produces cannot be one."""
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
    return sources


def _check_reserved(
    found: Iterable[tuple[Pattern, str, str]],
    merged: dict[str, Pattern],
    reserved: Reserved,
    problems: list[Problem],
) -> None:
    """One problem per pattern that could name the workspace's code or state (issue 14.1)."""
    seen: set[str] = set()
    for pat, file, field_ in found:
        if pat.key in seen:
            continue
        seen.add(pat.key)
        if reason := pattern_reason(merged.get(pat.key, pat), reserved):
            problems.append(Problem(file, field_, reason))


def _overlaps(stages: dict[str, Stage], sources: dict[str, Source]) -> list[Problem]:
    """Output patterns that can name the same path as another output or a source pattern."""
    problems = []
    outs = sorted(stages.values(), key=lambda st: (st.file, st.name))
    for i, st in enumerate(outs):
        others: list[tuple[str, Pattern]] = [
            (f"stage {o.qualname}'s output {o.output.key!r} ({o.file})", o.output)
            for o in outs[i + 1 :]
        ]
        others += [
            (f"the source pattern {key!r}", src.pattern)
            for key, src in sources.items()
            if key != st.output.key
        ]
        for what, pat in others:
            path = shared_path(st.output, pat)
            if path is not None:
                problems.append(
                    Problem(
                        st.file,
                        f"stages.{st.name}.output",
                        f"output {st.output.key!r} can name the same path as {what}, e.g. {path}; "
                        "constrain a variable (e.g. {slug:(?!index$)[^/]+}) or use another folder",
                    )
                )
    return problems


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
        retry=(st.retry or default_retry).rule(),
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
