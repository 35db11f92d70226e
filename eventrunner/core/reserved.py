"""The workspace's own code and state, which data may never be written to or read as.

With `data_root = "."` (the default) the data root is the workspace, so a pattern such as
`{folder}/{file}` could name `pipelines/evil.toml` or `handlers/h.py`: a webhook could write
code that the server hot-loads and runs (issue 14.1). Every path that data flows through is
checked against these names: pipeline validation, webhook intake, the spool's writes and the
watcher. Pure: paths relative to the data root in, reasons out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath, PurePosixPath

from eventrunner.core.patterns import Pattern

# Relative to the workspace: what eventrunner loads or owns there.
RESERVED_NAMES = ("pipelines", "handlers", "eventrunner.toml", ".eventrunner")
_WHAT = {
    "pipelines": "pipeline files",
    "handlers": "handler modules",
    "eventrunner.toml": "settings",
    ".eventrunner": "state folder",
}

Reserved = tuple[tuple[str, ...], ...]  # each reserved path relative to the data root, as segments


def reserved_paths(workspace: PurePath, data_root: PurePath) -> Reserved:
    """Where each reserved name lies relative to the data root (both absolute and resolved);
    empty when the workspace is not at or below the data root, so no data path can reach it."""
    try:
        rel = PurePosixPath(workspace.as_posix()).relative_to(PurePosixPath(data_root.as_posix()))
    except ValueError:
        return ()
    base = tuple(part for part in rel.parts if part != ".")
    return tuple((*base, name) for name in RESERVED_NAMES)


def data_root_problem(workspace: PurePath, data_root: PurePath) -> str | None:
    """Why the data root cannot be used at all: it lies inside one of the reserved paths."""
    try:
        rel = PurePosixPath(data_root.as_posix()).relative_to(PurePosixPath(workspace.as_posix()))
    except ValueError:
        return None
    if rel.parts and rel.parts[0] in RESERVED_NAMES:
        first = rel.parts[0]
        return f"{rel.as_posix()!r} is inside the workspace's {_WHAT[first]} ({first})"
    return None


def reserved_reason(relpath: str | Sequence[str], reserved: Reserved) -> str | None:
    """Why `relpath` (relative to the data root; text or segments) is, or is inside, one of the
    reserved paths; None when data may go there."""
    parts = tuple(relpath.split("/")) if isinstance(relpath, str) else tuple(relpath)
    for path in reserved:
        if parts[: len(path)] == path:
            shown = "/".join(parts)
            return f"{shown!r} is the workspace's {_WHAT[path[-1]]} ({'/'.join(path)})"
    return None


def pattern_reason(pattern: Pattern, reserved: Reserved) -> str | None:
    """Why some path `pattern` can name would be (or hold) a reserved path; None when none can."""
    hits = [path for path in reserved if pattern.can_name(path)]
    if not hits:
        return None
    where = ", ".join(f"{'/'.join(path)} ({_WHAT[path[-1]]})" for path in hits)
    return (
        f"pattern {pattern.key!r} could name the workspace's own {where}: start it with a "
        "literal folder, constrain its first variable, or set data_root to a folder of its own"
    )
