"""Writing and following the stamp of fastpath.py: shared by `run` and `serve`.

A stamp vouches that a full evaluation would find nothing to run as long as every recorded
stat still holds; writing one is refused whenever that cannot be shown (see fastpath.write).
"""

from __future__ import annotations

import os
from typing import Any

from . import fastpath
from .index import unpack_stat


def scan_dirs(ws: Any) -> list[str]:
    """Every folder a source scan walks (their mtimes change when files come or go)."""
    root = str(ws.settings.data_root)
    paths: list[str] = []
    for key, src in ws.graph.sources.items():
        depth = (
            key.count("/")
            - src.pattern.static_prefix.count("/")
            - (1 if src.pattern.static_prefix else 0)
        )
        paths += fastpath.scan_dirs(root, src.pattern.static_prefix, depth)
    return paths


def dir_snapshot(ws: Any) -> dict[str, tuple[int, int, int]]:
    """Stats of the scan folders taken before the scan: a file arriving during the run changes
    one of them, and the stamp then refuses to vouch for a scan that did not see it."""
    out = {}
    for d in scan_dirs(ws):
        try:
            st = os.stat(d)
        except OSError:
            continue
        out[d] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def write_stamp(
    ws: Any,
    index: Any,
    skipped: int,
    carried: list[str] | None = None,
    dirs_before: dict[str, tuple[int, int, int]] | None = None,
) -> None:
    """Record what an evaluation depended on (fastpath.py). After an incremental run the index
    has seen only the changed files, so the previous stamp's paths are `carried` forward."""
    root = str(ws.settings.data_root)
    defs = fastpath.definition_files(ws.root)
    defs += sorted({str(ref.path) for ref in ws.handlers.values() if ref.stock})
    defs.append(str(index.cache_path))  # rewritten by every change of state (invalidate, hold, ...)
    paths = list(dirs_before) if dirs_before else scan_dirs(ws)
    # Cache entries of files gone since (an orphan's input) played no part in the evaluation.
    paths += sorted(
        ({os.path.join(root, rel) for rel in index.files} | set(carried or ())) - set(paths)
    )
    retries = [
        f.next_retry
        for fs in index.failures.values()
        for f in fs.values()
        if not f.dead and f.next_retry
    ]
    # Our own outputs are replaced by rename (a new inode): the racy window does not concern them.
    replaced = [str(index.cache_path), *(os.path.join(root, rel) for rel in index.written)]
    # What the evaluation hashed; a file whose stats moved since changed mid-run.
    expected = {
        os.path.join(root, rel): (size, mtime_ns, ino)
        for rel, (size, mtime_ns, ino, _) in ((r, unpack_stat(e)) for r, e in index.files.items())
        if mtime_ns >= 0
    }
    expected.update(dirs_before or {})
    fastpath.write(
        ws.settings.state_dir,
        defs,
        paths,
        index.source_paths(),
        min(retries, default=float(2**62)),
        {"skipped": skipped},
        replaced=replaced,
        expected=expected,
    )


def targets_since(engine: Any, index: Any, ws: Any, look: Any) -> list[Any]:
    """Targets affected by files whose stats changed and by source files added or removed."""
    root = str(ws.settings.data_root)
    modified: list[str] = []
    comings_and_goings = False
    for path in look.changed:
        rel = os.path.relpath(path, root)
        if not rel.startswith("..") and os.path.isfile(path):
            modified.append(rel)
        else:
            comings_and_goings = True  # a folder (files came or went) or a file gone
    events: list[tuple[str, str]] = []
    if comings_and_goings:
        # Only then can the set of source files differ (each folder a scan walks is stamped):
        # comparing the sets costs O(sources), the rest O(changed).
        now, sources_then = index.source_paths(), look.sources
        events += [("deleted", rel) for rel in sources_then - now]
        events += [("added", rel) for rel in now - sources_then]
    events += [("modified", rel) for rel in modified]
    targets: list[Any] = []
    for kind, rel in events:
        targets.extend(engine.planner.targets_for_change(kind, rel)[0])
    return targets
