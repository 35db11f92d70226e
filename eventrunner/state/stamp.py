"""Writing and following the stamp of fastpath.py: shared by `run` and `serve`.

A stamp vouches that a full evaluation would find nothing to run as long as every recorded
stat still holds; writing one is refused whenever that cannot be shown (see fastpath.write).
"""

from __future__ import annotations

import os
from typing import Any

from eventrunner.state import fastpath
from eventrunner.state.filecache import unpack_stat


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
    base: fastpath.Look | None = None,
    dirs_before: dict[str, tuple[int, int, int]] | None = None,
    changed: list[str] | None = None,
    recorded: dict[str, Any] | None = None,
    same_sources: bool = False,
    diff: Any = None,
) -> bool:
    """Record what an evaluation depended on (fastpath.py), and its result: `skipped` and what
    else the no-change run reports again (`recorded`: marshal-able plain data); False when
    refused.

    After an incremental run (`base`: the stamp it started from, `changed`: what its look found
    changed) the previous stamp's packed arrays are carried forward and only the changed, the
    touched (hashed, written, gone) and the folders are read again: every other path keeps the
    stats the previous stamp recorded, which a look found still true. O(changes), not a stat
    and a string per file. `same_sources`: the source files are the base's (no folder changed);
    `diff`: they are the base's with a SourceDiff's applied."""
    if index.damaged:
        return False  # what the index says is not vouched for: the next start rebuilds it
    root = str(ws.settings.data_root)
    defs = _definitions(ws, index)
    dirs = list(dirs_before) if dirs_before else scan_dirs(ws)
    retries = [
        f.next_retry
        for fs in index.failures.values()
        for f in fs.values()
        if not f.dead and f.next_retry
    ]
    replaced = _replaced(index, root)
    sources, source_ids = _sources(ws, index, base if same_sources or diff else None, diff)
    common = (sources, source_ids, min(retries, default=float(2**62)))
    result = {**(recorded or {}), "skipped": skipped}
    prefix = os.path.join(root, "")
    if base is None or not dirs_before or base.root != prefix:
        # (A base below another root: the data root moved, and every path is read again.)
        paths = _full_paths(index, prefix, dirs)
        expected = _expected(index.files.entries.items(), prefix, dirs_before)
        return fastpath.write(
            ws.settings.state_dir, defs, paths, *common, result, replaced, expected, root=prefix
        )
    restat = [*dirs, *(changed or ()), *(prefix + r for r in index.files.touched)]
    entries = index.files.entries
    rels = [p[len(prefix) :] for p in restat if p.startswith(prefix)]
    expected = _expected(((rel, entries.get(rel)) for rel in rels), prefix, dirs_before)
    return fastpath.write(
        ws.settings.state_dir,
        defs,
        restat,
        *common,
        result,
        replaced,
        expected,
        base=base.packed_paths,
        root=prefix,
    )


def _sources(
    ws: Any, index: Any, base: fastpath.Look | None, diff: Any
) -> tuple[str, dict[str, str]]:
    """The packed sources and source ids to record: the base's when they are today's, the
    base's with `diff` applied (set operations and joins in C, not a relpath built per source
    file), else packed from the index."""
    if base is not None and diff is None:
        return base.packed_sources, base.packed_source_ids
    if base is not None:
        now = set(base.packed_sources.split("\0")).difference(diff.gone, [""])
        ids = {key: "\0".join(index.instances[key].items) for key in ws.graph.sources}
        return "\0".join(sorted(now.union(diff.added))), ids
    return fastpath.pack_sources(
        index.source_paths(), {key: index.instances[key].items for key in ws.graph.sources}
    )


def _full_paths(index: Any, prefix: str, dirs: list[str]) -> list[str]:
    """What a full stamp records: the folders, then the source files (what users change: the
    look finds them early, and tells its caller to begin a run's imports at the first
    change), then everything else a full evaluation depended on."""
    sources = {prefix + rel for rel in index.source_paths()}.difference(dirs)
    rest = _known_paths(index, prefix).difference(dirs, sources)
    return dirs + sorted(sources) + sorted(rest)


def _known_paths(index: Any, prefix: str) -> set[str]:
    """What a full evaluation depended on besides the source files: the file cache's entries
    (those of files gone since, an orphan's input, played no part) and every recorded
    output, cached or not. The cache forgets what it hashed within the racy window (a source written just
    before the run, an output committed just before the save), and a path left out of the
    stamp is never looked at again: an in-place edit of it went unseen."""
    known = {prefix + rel for rel in index.files.entries}
    for q in index.manifests:
        known.update(prefix + rel for made, _ in index.stage_outputs(q) for rel in made)
    return known


def _definitions(ws: Any, index: Any) -> list[str]:
    """What makes a full evaluation when it changes: the pipeline files, stock handlers, and the
    index cache's seal (every save of a change of state, invalidate, hold, ... replaces it)."""
    defs = fastpath.definition_files(ws.root)
    defs += sorted({str(ref.path) for ref in ws.handlers.values() if ref.stock})
    return [*defs, str(index.seal_path)]


def _replaced(index: Any, root: str) -> list[str]:
    """Files only ever replaced by rename (a new inode): the racy window does not concern them.
    Our own outputs and the index cache's seal."""
    return [
        str(index.seal_path),
        *(os.path.join(root, rel) for rel in index.files.written),
    ]


def _expected(
    entries: Any,
    prefix: str,
    dirs_before: dict[str, tuple[int, int, int]] | None,
) -> dict[str, tuple[int, int, int]]:
    """What the evaluation hashed, from (relpath, stat/hash entry or None) pairs (and the
    folders' stats before the scan): a file whose stats moved since changed mid-run."""
    expected = {
        prefix + rel: (size, mtime_ns, ino)
        for rel, entry in entries
        if entry is not None
        for size, mtime_ns, ino, _ in (unpack_stat(entry),)
        if mtime_ns >= 0
    }
    expected.update(dirs_before or {})
    return expected


def changes_since(index: Any, ws: Any, look: Any, diff: Any = None) -> list[tuple[str, str]]:
    """(kind, relpath) of files whose stats changed since the stamp and of source files added
    or removed: what a session catching up from the stamp reports to its engine. `diff`: the
    sources that came and went, when the session knows them (sourcediff.py)."""
    root = str(ws.settings.data_root)
    modified: list[str] = []
    gone: list[str] = []
    comings_and_goings = False
    for path in look.changed:
        rel = os.path.relpath(path, root)
        if not rel.startswith("..") and os.path.isfile(path):
            modified.append(rel)
        else:
            comings_and_goings = True  # a folder (files came or went) or a file gone
            if not rel.startswith("..") and not os.path.lexists(path):
                gone.append(rel)
    events: list[tuple[str, str]] = []
    if comings_and_goings and diff is not None:
        events += [("deleted", rel) for rel in diff.gone] + [("added", rel) for rel in diff.added]
        # A stamped file gone that was no source: an output deleted by hand (its producer decides).
        went = set(diff.gone)
        events += [("deleted", rel) for rel in gone if rel not in went]
    elif comings_and_goings:
        # Only then can the set of source files differ (each folder a scan walks is stamped):
        # comparing the sets costs O(sources), the rest O(changed).
        now, sources_then = index.source_paths(), look.sources
        events += [("deleted", rel) for rel in sources_then - now]
        events += [("added", rel) for rel in now - sources_then]
        events += [("deleted", rel) for rel in gone if rel not in sources_then]
    events += [("modified", rel) for rel in modified]
    return events
