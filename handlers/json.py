"""Stock handler `json`: pick fields out of one JSON input by dotted paths.

params: `select` (output field -> path such as "item.title" or "tags.0") and optional
`defaults` (output field -> value used when the path is missing). With several inputs the
path starts with the input's name ("post.title").
"""

from __future__ import annotations

# This module is eventrunner_handlers.json: the absolute import is the standard library's, and
# the alias keeps the name `json` free for the handler function below.
import json as _json
from pathlib import Path
from typing import Any

from eventrunner.core.errors import PermanentError
from eventrunner.run.context import Context

from ._common import input_paths, one_output

WHAT = "json"
_MISSING = object()


def json(ctx: Context, **inputs: Path) -> dict[str, Any]:
    """{field: value found at its path} for every entry of params.select."""
    select = ctx.params.get("select")
    if (
        not isinstance(select, dict)
        or not select
        or not all(isinstance(p, str) and p for p in select.values())
    ):
        raise PermanentError(
            f"{WHAT}: params.select must be a table of output field -> dotted path"
        )
    defaults = ctx.params.get("defaults", {})
    if not isinstance(defaults, dict):
        raise PermanentError(f"{WHAT}: params.defaults must be a table of output field -> value")
    one_output(ctx, WHAT)
    if not inputs:
        raise PermanentError(f"{WHAT}: the stage must declare an input")
    docs = {name: _load(name, value) for name, value in inputs.items()}
    root = next(iter(docs.values())) if len(docs) == 1 else docs
    out: dict[str, Any] = {}
    for field, dotted in select.items():
        value = lookup(root, dotted)
        if value is _MISSING:
            if field not in defaults:
                raise PermanentError(
                    f"{WHAT}: path {dotted!r} (field {field!r}) not found in the input and no default"
                )
            value = defaults[field]
        out[field] = value
    return out


def _load(name: str, value: object) -> Any:
    if isinstance(value, dict):  # a fan-in input: member id -> document
        return {member: _load(name, value[member]) for member in sorted(value)}
    path = input_paths(name, value, WHAT)[0]
    try:
        return _json.loads(path.read_bytes())
    except ValueError as exc:
        raise PermanentError(f"{WHAT}: input {name} ({path.name}) is not JSON: {exc}") from None


def lookup(doc: Any, dotted: str) -> Any:
    """The value at "a.b.0" (keys of objects, indexes of arrays), or _MISSING."""
    node = doc
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            return _MISSING
    return node
