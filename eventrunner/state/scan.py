"""Scans of the data root: every path a pattern matches, found by walking only matching folders."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path

from eventrunner.core.patterns import Pattern


def inside(path: str, root_real: str) -> bool:
    """True when path, symlinks resolved, is root_real or below it."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def scan(
    pattern: Pattern, root: Path, skip: set[str] | frozenset[str] = frozenset()
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (relpath, values) for every path under root that pattern matches, sorted by relpath.

    Paths in `skip` are passed over for the cost of a set lookup (a folder of 100,000 outputs
    the caller already knows: ~30 ms)."""
    root_real, prefix, segments = os.path.realpath(root), pattern.static_prefix, pattern.segments
    variables = pattern.variables
    found: list[tuple[str, tuple[str, ...]]] = []  # values as tuples: 100,000s may be held
    # An explicit stack, not a recursive closure: a closure that calls itself is a reference
    # cycle, which kept `found` (every match) alive until the cyclic collector ran.
    stack: list[tuple[int, str, str, dict[str, str]]] = []
    start = os.path.join(root_real, prefix) if prefix else root_real
    if not prefix:
        stack.append((0, start, "", {}))
    elif inside(start, root_real):
        stack.append((prefix.count("/") + 1, start, prefix + "/", {}))
    while stack:
        index, folder, rel, values = stack.pop()
        last = index == len(segments) - 1
        try:
            # Streamed, not listed: a folder of 100,000 files would otherwise hold as many
            # DirEntry objects at once (transient memory that fragments the heap).
            it = os.scandir(folder)
        except OSError:
            continue
        with it:
            for entry in it:
                if last and skip and rel + entry.name in skip:
                    continue
                if (bound := segments[index].bind(entry.name)) is None:
                    continue
                if values:
                    if any(values.get(var, value) != value for var, value in bound.items()):
                        continue
                    bound = {**values, **bound}
                try:  # d_type answers these without a stat call, except for symlinks
                    if not ((entry.is_file() or entry.is_dir()) if last else entry.is_dir()):
                        continue
                    if entry.is_symlink() and not inside(entry.path, root_real):
                        continue
                except OSError:
                    continue
                if last:
                    found.append((rel + entry.name, tuple(bound[v] for v in variables)))
                else:  # only folders whose name matches are entered: the pruning
                    stack.append((index + 1, entry.path, f"{rel}{entry.name}/", bound))
    found.sort(key=itemgetter(0))
    for relpath, vals in found:
        yield relpath, dict(zip(variables, vals, strict=True))


def one_level(pattern: Pattern) -> bool:
    """All variables in the last segment, the segments before it literal (out/{id}.txt): the
    pattern's matches are names in one folder, which one listing finds."""
    prefix = pattern.static_prefix
    return len(pattern.segments) == (prefix.count("/") + 1 if prefix else 0) + 1


def folder_of(root: str, pattern: Pattern) -> str:
    """The folder a pattern's matches start in: its literal prefix below root."""
    prefix = pattern.static_prefix
    return os.path.join(root, prefix) if prefix else root


def named(pattern: Pattern, root: str, names: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """(relpath, values) of the names in a one_level pattern's folder that it matches, sorted,
    by the rules of scan(): a file or a folder, a symlink only if it stays below root."""
    lead = pattern.static_prefix + "/" if pattern.static_prefix else ""
    folder, root_real = folder_of(root, pattern), os.path.realpath(root)
    out = []
    for name in names:
        path = os.path.join(folder, name)
        if (values := pattern.match(lead + name)) is None:
            continue
        if not (os.path.isfile(path) or os.path.isdir(path)):
            continue
        if os.path.islink(path) and not inside(path, root_real):
            continue
        out.append((lead + name, values))
    return sorted(out)
