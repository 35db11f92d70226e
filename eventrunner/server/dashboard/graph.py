"""The stage graph across pipelines, laid out on the server: Graphviz `dot` when installed,
else grandalf's Sugiyama layout (pure Python). Sources and stages are nodes; the page draws
them as SVG with a bar of state counts per stage. Layouts are cached per stage graph."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field

from eventrunner.core.graph import Graph

log = logging.getLogger("eventrunner.dashboard")

NODE_W, NODE_H = 200.0, 58.0
SOURCE_H = 40.0
MARGIN = 16.0
GAP = 40.0  # between unconnected parts (grandalf lays each out alone)


@dataclass
class Node:
    """One box: a stage (qualname) or a source (pattern key)."""

    id: str
    label: str
    sub: str
    stage: str | None
    x: float = 0.0  # top-left corner
    y: float = 0.0
    w: float = NODE_W
    h: float = NODE_H


@dataclass
class Layout:
    """Positioned nodes and edge paths (SVG path data), the canvas size, and who laid it out."""

    nodes: list[Node]
    edges: list[str] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    engine: str = "grandalf"


def nodes_and_edges(g: Graph) -> tuple[list[Node], list[tuple[int, int]]]:
    """Sources and stages, with an edge for every input (producer or source -> consumer)."""
    nodes: list[Node] = []
    where: dict[str, int] = {}
    for key, src in sorted(g.sources.items()):
        where[key] = len(nodes)
        nodes.append(Node(f"n{len(nodes)}", src.pattern.key, "source", None, h=SOURCE_H))
    for q in g.order:
        st = g.stages[q]
        where[q] = len(nodes)
        nodes.append(Node(f"n{len(nodes)}", q, st.kind, q))
    edges: set[tuple[int, int]] = set()
    for q in g.order:
        for inp in g.stages[q].inputs:
            key = inp.pattern.key
            tail = g.producer.get(key, key)
            if tail in where:
                edges.add((where[tail], where[q]))
    return nodes, sorted(edges)


_CACHE: dict[int, tuple[Graph, Layout]] = {}


def layout(g: Graph) -> Layout:
    """The layout of this graph (computed once per graph object)."""
    hit = _CACHE.get(id(g))
    if hit is not None and hit[0] is g:
        return hit[1]
    nodes, edges = nodes_and_edges(g)
    result = None
    if shutil.which("dot"):
        try:
            result = _dot(nodes, edges)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.warning("dot failed (%s); laying the graph out with grandalf", exc)
    if result is None:
        result = _grandalf(nodes, edges)
    _CACHE.clear()
    _CACHE[id(g)] = (g, result)
    return result


def _grandalf(nodes: list[Node], edges: list[tuple[int, int]]) -> Layout:
    from grandalf.graphs import Edge, Graph, Vertex
    from grandalf.layouts import SugiyamaLayout
    from grandalf.routing import route_with_lines

    class View:
        def __init__(self, w: float, h: float) -> None:
            self.w, self.h, self.xy = w, h, (0.0, 0.0)

    class EdgeView:
        pts: list[tuple[float, float]] = []

        def setpath(self, pts: list[tuple[float, float]]) -> None:
            self.pts = pts

    verts = [Vertex(i) for i in range(len(nodes))]
    for v, n in zip(verts, nodes, strict=True):
        v.view = View(n.w, n.h)
    es = [Edge(verts[a], verts[b]) for a, b in edges]
    for e in es:
        e.view = EdgeView()
    paths: list[str] = []
    offset = MARGIN
    height = 0.0
    for core in Graph(verts, es).C:
        sug = SugiyamaLayout(core)
        sug.xspace, sug.yspace = 30, 46
        sug.route_edge = route_with_lines
        sug.init_all()
        sug.draw()
        members = list(core.sV)
        bends = [p for e in core.sE for p in e.view.pts]  # long edges bend beside the boxes
        left = min([v.view.xy[0] - v.view.w / 2 for v in members] + [x - 8 for x, _ in bends])
        top = min(v.view.xy[1] - v.view.h / 2 for v in members)
        right = max([v.view.xy[0] + v.view.w / 2 for v in members] + [x + 8 for x, _ in bends])
        dx, dy = offset - left, MARGIN - top
        for v in members:
            n = nodes[v.data]
            n.x, n.y = v.view.xy[0] - n.w / 2 + dx, v.view.xy[1] - n.h / 2 + dy
            height = max(height, n.y + n.h)
        for e in core.sE:
            pts = [(x + dx, y + dy) for x, y in e.view.pts]
            paths.append("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts))
        offset += right - left + GAP
    return Layout(nodes, paths, offset - GAP + MARGIN, height + MARGIN, "grandalf")


def _dot(nodes: list[Node], edges: list[tuple[int, int]]) -> Layout:
    lines = ["digraph G {", "rankdir=TB; nodesep=0.4; ranksep=0.6;"]
    for n in nodes:
        lines.append(
            f'{n.id} [shape=box fixedsize=true width={n.w / 72:.3f} height={n.h / 72:.3f} label=""];'
        )
    lines += [f"{nodes[a].id} -> {nodes[b].id};" for a, b in edges]
    lines.append("}")
    proc = subprocess.run(
        ["dot", "-Tplain"], input="\n".join(lines), capture_output=True, text=True, timeout=10,
        check=True,
    )  # fmt: skip
    by_id = {n.id: n for n in nodes}
    height = width = 0.0
    raw_edges: list[list[tuple[float, float]]] = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "graph":
            width, height = float(parts[2]) * 72, float(parts[3]) * 72
        elif parts and parts[0] == "node":
            n = by_id[parts[1]]
            cx, cy = float(parts[2]) * 72, float(parts[3]) * 72
            n.x, n.y = cx - n.w / 2 + MARGIN, height - cy - n.h / 2 + MARGIN
        elif parts and parts[0] == "edge":
            count = int(parts[3])
            coords = [float(c) * 72 for c in parts[4 : 4 + 2 * count]]
            raw_edges.append(list(zip(coords[0::2], coords[1::2], strict=True)))
    if not width:
        raise ValueError("no graph line in dot's output")
    paths = []
    for pts in raw_edges:
        flipped = [(x + MARGIN, height - y + MARGIN) for x, y in pts]
        head, rest = flipped[0], flipped[1:]
        curves = " ".join(
            "C" + " ".join(f"{x:.1f},{y:.1f}" for x, y in rest[i : i + 3])
            for i in range(0, len(rest) - 2, 3)
        )
        paths.append(f"M{head[0]:.1f},{head[1]:.1f} {curves}")
    return Layout(nodes, paths, width + 2 * MARGIN, height + 2 * MARGIN, "dot")


def bar(
    counts: dict[str, int], width: float, order: tuple[str, ...]
) -> list[tuple[str, float, float, int]]:
    """(state, x, w, n) segments of a stacked bar `width` wide, one per state in `order`: a
    state with any count is at least 1 unit wide (live.js draws the same way)."""
    raw = [(s, counts.get(s, 0)) for s in order]
    total = sum(n for _, n in raw)
    if not total:
        return [(s, 0.0, 0.0, 0) for s, _ in raw]
    widths = [max(width * n / total, 1.0) if n else 0.0 for _, n in raw]
    scale = width / sum(widths)
    out, x = [], 0.0
    for (s, n), w in zip(raw, widths, strict=True):
        out.append((s, round(x, 2), round(w * scale, 2), n))
        x += w * scale
    return out
