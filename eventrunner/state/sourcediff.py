"""Which source files came and went since a stamp, from a listing of each folder that changed.

A file dropped into an ingestion folder changes that folder's stats, and a session following
the stamp then needs today's source files. A scan of every source pattern finds them for the
cost of a DirEntry, a match and a type check per file (3 s at 100,000 files); where a
pattern's variables are all in one folder level (`inbox/{name}.txt`), the folder's listing
differenced against the stamp's source files in C finds them too, and only the files that
came or went are matched one by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from eventrunner.core.patterns import Pattern, entity_id
from eventrunner.state.fastpath import Look
from eventrunner.state.scan import folder_of, named, one_level


@dataclass
class SourceDiff:
    """The source files now, told as the stamp's plus what came and went."""

    ids: dict[str, list[str]]  # source pattern key -> entity ids now
    added: list[str]  # relpaths of source files that came
    gone: list[str]  # relpaths of source files that went


def sources_now(
    ws: Any, follow: Look | None
) -> tuple[dict[str, list[str]] | None, SourceDiff | None]:
    """The entity ids of every source pattern now when a look tells them without a scan (no
    stamped folder changed, or diff_sources could list the changed ones), with the diff."""
    if follow is None:
        return None, None
    if not follow.files_came_or_went:
        return follow.source_ids(), None
    diff = diff_sources(ws, follow)
    return (diff.ids if diff is not None else None), diff


def diff_sources(ws: Any, look: Look) -> SourceDiff | None:
    """The sources now, when every source pattern whose folder changed is one folder level;
    None when one is not (the caller scans)."""
    root = str(ws.settings.data_root)
    changed = [p for p in look.changed if os.path.isdir(p) or not os.path.lexists(p)]
    then_ids = look.source_ids()
    ids: dict[str, list[str]] = {}
    added: list[str] = []
    gone: list[str] = []
    then_paths: str | None = None
    for key, src in ws.graph.sources.items():
        folder = folder_of(root, src.pattern)
        if key not in then_ids:
            return None
        if not any(_related(p, folder) for p in changed):
            ids[key] = then_ids[key]
            continue
        if not one_level(src.pattern):
            return None
        if then_paths is None:
            then_paths = "\0" + look.packed_sources
        came, went = _listing_diff(src.pattern, root, folder, then_paths)
        gone_ids = {entity_id(src.pattern.variables, vs) for _, vs in went}
        kept = [e for e in then_ids[key] if e not in gone_ids] if gone_ids else then_ids[key]
        ids[key] = kept + [entity_id(src.pattern.variables, vs) for _, vs in came]
        added += [rel for rel, _ in came]
        gone += [rel for rel, _ in went]
    return SourceDiff(ids, added, gone)


def _listing_diff(
    pattern: Pattern, root: str, folder: str, then_paths: str
) -> tuple[list[tuple[str, dict[str, str]]], list[tuple[str, dict[str, str]]]]:
    """(relpath, values) of the pattern's files that came, and of those that went, since the
    stamp (`then_paths`: its NUL-joined source relpaths, led by a NUL)."""
    prefix = pattern.static_prefix
    lead = prefix + "/" if prefix else ""
    # The stamp's files in this folder, by name: other folders' paths keep a "/" that no
    # name of a listing has. A NUL-led join, so that every path is replaced alike.
    then = set(then_paths.replace("\0" + lead, "\0").split("\0")) if lead else _top(then_paths)
    then.discard("")
    try:
        now = set(os.listdir(folder))
    except OSError:
        now = set()
    came = named(pattern, root, now - then)
    went = [(lead + n, vs) for n in then - now if (vs := pattern.match(lead + n)) is not None]
    return came, sorted(went)


def _top(then_paths: str) -> set[str]:
    """The stamp's source relpaths in the data root itself (no folder)."""
    return {p for p in then_paths.split("\0") if "/" not in p}


def _related(path: str, folder: str) -> bool:
    """True when `path` (a changed stamped folder, or a path gone) is the folder, above it
    (it was made or removed), or inside it."""
    path, folder = path.rstrip(os.sep), folder.rstrip(os.sep)
    return path == folder or folder.startswith(path + os.sep) or path.startswith(folder + os.sep)
