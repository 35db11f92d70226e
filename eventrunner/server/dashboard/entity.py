"""One entity across stages: state and reasons, manifest, inputs linked to their producers,
an output preview, attempts (from the execution history), the last failure, lineage."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventrunner.core.errors import UnknownName
from eventrunner.core.graph import Stage
from eventrunner.core.patterns import entity_id
from eventrunner.core.records import Failure, Manifest
from eventrunner.core.staleness import Reason
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.planner import Planner
from eventrunner.server.states import StateTable
from eventrunner.service.history import Execution, History
from eventrunner.state.index import Index

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime

PREVIEW_BYTES = 4096
LINEAGE_SHOWN = 50
STDERR_MARK = "--- last stderr lines ---"


@dataclass
class Link:
    """A file of a state, with the state that produces it (None for a source file)."""

    name: str
    path: str
    hash: str | None
    stage: str | None = None
    entity: str | None = None
    state: str | None = None


@dataclass
class Preview:
    """The start of an output: text, or a note for binary data and folders."""

    path: str
    text: str | None
    note: str


@dataclass
class StageView:
    """Everything the entity page shows for one stage."""

    stage: Stage
    state: str
    reasons: tuple[Reason, ...]
    manifest: Manifest | None
    failure: Failure | None
    held: bool
    recorded: list[Link] = field(default_factory=list)
    upstream: list[Link] = field(default_factory=list)
    downstream: list[Link] = field(default_factory=list)
    downstream_total: int = 0
    previews: list[Preview] = field(default_factory=list)
    attempts: list[Execution] = field(default_factory=list)
    stderr: str | None = None


def entity_view(
    rt: Runtime, table: StateTable, history: History, eid: str, only: str | None = None
) -> list[StageView]:
    """Per stage that has this entity id; UnknownName when none has."""
    assert rt.index is not None
    index = rt.index
    ev = Evaluator(index)
    planner = Planner(index)
    out = []
    for q in rt.ws.graph.order:
        if only is not None and q != only:
            continue
        values = index.values_or_none(q, eid)
        if values is None or not (index.has_entity(q, values) or eid in index.manifests[q]):
            continue
        verdict = ev.verdict(q, eid, values)
        view = StageView(
            rt.ws.graph.stages[q],
            verdict.state,
            verdict.reasons,
            index.manifests[q].get(eid),
            index.failures[q].get(eid),
            index.control.held(q, eid),
        )
        _links(view, index, table, ev, values)
        below = planner.descendants(q, values)
        view.downstream_total = len(below)
        view.downstream = [
            Link(s, "", None, s, e, table.states.get(s, {}).get(e))
            for s, e, _ in below[:LINEAGE_SHOWN]
        ]
        view.previews = [
            _preview(index, p) for p in (view.manifest.output_paths[:3] if view.manifest else ())
        ]
        view.attempts = history.query(stages={q}, entity=eid, limit=20)
        if view.failure is not None:
            view.stderr = _stderr(view.failure)
        out.append(view)
    if not out:
        raise UnknownName(f"no stage has entity {eid!r}")
    return out


def _links(
    view: StageView, index: Index, table: StateTable, ev: Evaluator, values: dict[str, str]
) -> None:
    """Recorded inputs (from the manifest) and current inputs (lineage up), with producers."""
    stage = view.stage
    recorded = view.manifest.inputs if view.manifest else {}
    for name, files in sorted(recorded.items()):
        for path, digest in sorted(files.items()):
            view.recorded.append(_producer(index, table, stage, name, path, digest))
    if index.has_entity(stage.qualname, values):
        for f in ev.gather(stage.qualname, values, check_upstream=False).files:
            view.upstream.append(_producer(index, table, stage, f.name, f.relpath, f.hash))


def _producer(
    index: Index, table: StateTable, stage: Stage, name: str, path: str, digest: str | None
) -> Link:
    link = Link(name, path, digest)
    try:
        key = stage.input(name).pattern.key
    except KeyError:
        return link  # an input the stage no longer has (recorded by older code)
    producer = index.ws.graph.producer.get(key)
    found = index.instances[key].pattern.match(path)
    if producer is not None and found is not None:
        names = index.ws.graph.stages[producer].entity_vars
        link.stage = producer
        link.entity = entity_id(names, {v: found[v] for v in names})
        link.state = table.states.get(producer, {}).get(link.entity)
    return link


def _preview(index: Index, relpath: str) -> Preview:
    path = index.root / relpath
    try:
        if path.is_dir():
            names = sorted(os.listdir(path))
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            return Preview(relpath, None, f"folder of {len(names)} entries: {shown}")
        with open(path, "rb") as fh:
            head = fh.read(PREVIEW_BYTES + 1)
        size = path.stat().st_size
    except OSError as exc:
        return Preview(relpath, None, f"cannot read: {exc.strerror or exc}")
    cut = len(head) > PREVIEW_BYTES
    head = head[:PREVIEW_BYTES]
    if b"\0" in head:
        return Preview(relpath, None, f"binary, {size:,} bytes")
    text = head.decode("utf-8", errors="replace")
    return Preview(relpath, text, f"{size:,} bytes" + (", first 4 KB shown" if cut else ""))


def _stderr(f: Failure) -> str | None:
    """The stderr tail a handler's error carries (the stock shell handler appends one)."""
    captured = getattr(f, "stderr", None)
    if isinstance(captured, str) and captured:
        return captured
    if STDERR_MARK in f.error:
        return f.error.split(STDERR_MARK, 1)[1].strip("\n")
    return None
