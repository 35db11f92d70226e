"""The packed paths and stats of a stamp (fastpath.py): one NUL-joined string of names and
one array of int64 (size, mtime_ns, inode) triples, a triple per name.

Loads 20x faster than a list of tuples, and an incremental run patches them in O(changed)
(a search per changed path) instead of rebuilding 300,000 entries. Data paths below the
stamp's root are recorded relative to it: a third of the bytes to read, write and split.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from eventrunner.state import statlook


def pack(entries: list[tuple[str, tuple[int, int, int]]]) -> tuple[str, bytes]:
    """Paths as one NUL-joined string and stats as packed int64s: loads 20x faster than tuples."""
    flat = array("q", (n for _, ident in entries for n in ident))
    return "\0".join(p for p, _ in entries), flat.tobytes()


def unpack(packed: tuple[str, bytes]) -> tuple[list[str], array[int]]:
    names, raw = packed
    stats = array("q")
    stats.frombytes(raw)
    return (names.split("\0") if names else []), stats


def rel(root: str, path: str) -> str:
    """A data path as a stamp records it: relative to the stamp's root ("…/data/") when
    below it (a third of the bytes to read, write and split), else absolute."""
    return path[len(root) :] if root and path.startswith(root) else path


def recorded_stats(packed: tuple[str, bytes], root: str = "") -> dict[str, tuple[int, int, int]]:
    """path -> the (size, mtime_ns, inode) a stamp recorded for it (`root`: the stamp's)."""
    paths, stats = unpack(packed)
    return {
        statlook.absolute(root, p): (stats[3 * i], stats[3 * i + 1], stats[3 * i + 2])
        for i, p in enumerate(paths)
    }


def positions(names: str, paths: Iterable[str]) -> dict[str, int]:
    """Index in the NUL-joined `names` of each of `paths` found there: a search per path for a
    few (no list of 100,000s of strings built), one dict of them all for many."""
    paths = list(paths)
    if len(paths) > 64:
        where = {p: i for i, p in enumerate(names.split("\0"))}
        return {p: where[p] for p in paths if p in where}
    hay = "\0" + names + "\0"
    out = {}
    for p in paths:
        at = hay.find("\0" + p + "\0")
        if at >= 0:
            out[p] = hay.count("\0", 0, at + 1) - 1
    return out


def patched(
    base: tuple[str, bytes], fresh: list[tuple[str, tuple[int, int, int] | None]]
) -> tuple[str, array[int]]:
    """The packed (names, stats) of `base` with the `fresh` stats applied: updated in place,
    added at the end, or (None: gone) left out."""
    names, raw = base
    stats = array("q")
    stats.frombytes(raw)
    where = positions(names, [path for path, _ in fresh])
    gone: set[int] = set()
    added: list[tuple[str, tuple[int, int, int]]] = []
    for path, ident in fresh:
        i = where.get(path)
        if i is None:
            if ident is not None:
                added.append((path, ident))
        elif ident is None:
            gone.add(i)
        else:
            stats[3 * i : 3 * i + 3] = array("q", ident)
    if gone:  # rare (files deleted): rebuild the arrays without them
        kept = [(p, i) for i, p in enumerate(names.split("\0")) if i not in gone]
        names = "\0".join(p for p, _ in kept)
        stats = array("q", (n for _, i in kept for n in stats[3 * i : 3 * i + 3]))
    if added:
        extra_names, extra_stats = pack(added)
        names = names + "\0" + extra_names if names else extra_names
        stats.frombytes(extra_stats)
    return names, stats
