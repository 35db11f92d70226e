"""Render the stage graph as text, Mermaid or Graphviz dot."""

from __future__ import annotations

from typing import Any

from eventrunner.core.graph import Graph


def _edges(graph: Graph) -> list[tuple[str, str, str]]:
    """(from node, to node, label): sources and stages feed stages through named inputs."""
    out = []
    for q in graph.order:
        stage = graph.stages[q]
        for inp in stage.inputs:
            src = graph.producer.get(inp.pattern.key, f"source:{inp.pattern.key}")
            out.append((src, q, inp.name + (" (all)" if inp.aggregated else "")))
    return out


def render(graph: Graph, fmt: str) -> str:
    """The graph in `fmt` (text, mermaid, dot)."""
    edges = _edges(graph)
    ids = {n: f"n{i}" for i, n in enumerate(sorted({e[0] for e in edges} | set(graph.stages)))}

    def label(node: str) -> str:
        if node.startswith("source:"):
            return node.removeprefix("source:")
        st = graph.stages[node]
        return f"{node} [{st.kind}] -> {st.output.key}"

    if fmt == "mermaid":
        lines = ["flowchart LR"]
        lines += [f'  {ids[n]}["{label(n)}"]' for n in ids]
        lines += [f"  {ids[a]} -->|{lbl}| {ids[b]}" for a, b, lbl in edges]
        return "\n".join(lines)
    if fmt == "dot":
        lines = ["digraph eventrunner {", "  rankdir=LR;"]
        for n in ids:
            shape = "note" if n.startswith("source:") else "box"
            lines.append(f'  {ids[n]} [label="{label(n)}", shape={shape}];')
        lines += [f'  {ids[a]} -> {ids[b]} [label="{lbl}"];' for a, b, lbl in edges]
        lines.append("}")
        return "\n".join(lines)
    lines = []
    for q in graph.order:
        st = graph.stages[q]
        lines.append(f"{q} ({st.kind}, handler {st.handler}) -> {st.output.key}")
        for inp in st.inputs:
            src = graph.producer.get(inp.pattern.key, "source")
            lines.append(
                f"  <- {inp.name}: {inp.pattern.key} (from {src}{', all' if inp.aggregated else ''})"
            )
    return "\n".join(lines) if lines else "(no stages)"


def as_json(graph: Graph) -> dict[str, Any]:
    """The graph as plain data (`graph --json`): stages upstream first, sources, and edges."""
    stages = []
    for q in graph.order:
        st = graph.stages[q]
        stages.append(
            {
                "stage": q,
                "pipeline": st.pipeline,
                "name": st.name,
                "kind": st.kind,
                "handler": st.handler,
                "inputs": [
                    {
                        "name": inp.name,
                        "pattern": inp.pattern.key,
                        "from": graph.producer.get(inp.pattern.key),  # None: a source
                        "aggregated": bool(inp.aggregated),
                    }
                    for inp in st.inputs
                ],
                "output": st.output.key,
                "schedule": st.schedule,
            }
        )
    sources = [
        {
            "pattern": key,
            "text": src.pattern.text,
            "pipeline": src.pipeline,
            "name": src.name,
            "webhook": src.webhook is not None,
        }
        for key, src in sorted(graph.sources.items())
    ]
    edges = [
        {
            "from": graph.producer.get(inp.pattern.key, f"source:{inp.pattern.key}"),
            "to": q,
            "input": inp.name,
            "aggregated": bool(inp.aggregated),
        }
        for q in graph.order
        for inp in graph.stages[q].inputs
    ]
    return {"stages": stages, "sources": sources, "edges": edges}
