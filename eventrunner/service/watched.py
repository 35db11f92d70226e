"""What serve watches: the source folders and the workspace's code, and which changes are code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace


def watch_targets(ws: Workspace) -> tuple[list[Path], list[Path]]:
    """(data paths, code paths) to watch. Data: the source folders only — outputs are ours,
    and watching them would cost a walk of every output at start and an echo per write (an
    output edited by hand is caught by the periodic reconcile and by `run`). Code: handlers/,
    pipelines/ and eventrunner.toml, unless the data watch already covers the workspace."""
    data, root = ws.settings.data_root, ws.settings.workspace
    prefixes = sorted({src.pattern.static_prefix for src in ws.graph.sources.values()})
    tops = [p for p in prefixes if not any(p.startswith(q + "/") for q in prefixes if q != p)]
    if not tops or "" in tops or not all((data / p).is_dir() for p in tops):
        data_paths = [data]  # a source at the root, or a drop folder not created yet
    else:
        data_paths = [data / p for p in tops]
    if data in data_paths and root == data:
        return data_paths, []
    code = [
        p for p in (root / "handlers", root / "pipelines", root / "eventrunner.toml") if p.exists()
    ]
    return data_paths, code


def flat(ws: Workspace, data_paths: list[Path]) -> bool:
    """True when every source file lies directly in a watched folder (`inbox/{name}.txt`):
    a watch of each folder itself then sees them all. A recursive watch walks the folder to
    add one per subfolder, a stat per entry: 0.37 s of serve's start at 100,000 files."""
    data, watched = ws.settings.data_root, set(data_paths)
    for key, src in ws.graph.sources.items():
        prefix = src.pattern.static_prefix
        # The folders below the prefix that a scan walks (stamp.scan_dirs counts them alike).
        depth = key.count("/") - prefix.count("/") - (1 if prefix else 0)
        if depth != 0 or not prefix or data / prefix not in watched:
            return False
    return data not in watched


def is_code(path: Path, workspace: Path) -> bool:
    """Pipeline files, handler modules and eventrunner.toml trigger a reload, not work."""
    try:
        rel = path.relative_to(workspace)
    except ValueError:
        return False
    parts = rel.parts
    if parts == ("eventrunner.toml",):
        return True
    if parts and parts[0] == "pipelines" and rel.suffix in (".toml", ".json"):
        return True
    return bool(parts) and parts[0] == "handlers" and rel.suffix == ".py"
