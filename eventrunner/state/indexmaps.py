"""The index's lazy maps over its SQLite file, and what they do when the file is found damaged.

A value that does not check out (state/indexdb.py) is never used: the damage is reported (the
index then keeps its dirty marker, so the next start rebuilds, and writes no stamp) and the
read goes to the truth instead, the sidecar manifests under .eventrunner/state; a stat/hash
entry that does not check out reads as absent (the file is hashed again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from eventrunner.core.records import Manifest
from eventrunner.state.indexdb import Damaged, IndexDB
from eventrunner.state.lazymap import LazyMap
from eventrunner.state.store import Store

T = TypeVar("T")
Outputs = tuple[tuple[str, ...], tuple[str, ...]]  # (output paths, dropped paths)

MANIFESTS_CACHED = 4096  # decoded manifests kept per stage (what events ask for again)
FILES_CACHED = 16384  # stat/hash entries kept


def manifest_map(
    db: IndexDB, store: Store, q: str, damaged: Callable[[], None]
) -> LazyMap[Manifest]:
    """A stage's manifests: entity -> Manifest, read from `db` on demand."""

    def fetch(eid: str) -> Manifest | None:
        try:
            return db.manifest(q, eid)
        except Damaged:
            damaged()
            return store.read_manifest(q, eid)

    def scan() -> Iterator[tuple[str, Manifest]]:
        return rows(db.manifests, store, q, damaged, lambda m: m)

    def keys() -> Iterator[str]:
        return (eid for eid, _ in rows(db.manifest_outputs_of, store, q, damaged, _outputs))

    return LazyMap(fetch, scan, keys, MANIFESTS_CACHED)


def _outputs(m: Manifest) -> Outputs:
    return tuple(m.output_paths), tuple(m.dropped)


def stage_outputs(
    db: IndexDB, store: Store, q: str, mm: LazyMap[Manifest], damaged: Callable[[], None]
) -> Iterator[Outputs]:
    """(output paths, dropped paths) of every manifest of a stage, without decoding the
    records in the file (a narrow scan), unsaved changes included."""
    if mm.complete:  # warm (a fan-in checked every member): in memory already
        yield from [_outputs(m) for m in mm.values()]
        return
    # A copy: a reader may pause between rows (the server's stray check), and a change saved
    # meanwhile must not leave both its row (skipped as pending) and its pending entry unseen.
    pending = dict(mm.pending)
    for eid, outs in rows(db.manifest_outputs_of, store, q, damaged, _outputs):
        if eid not in pending:
            yield outs
    for m in list(pending.values()):
        if m is not None:
            yield _outputs(m)


def rows(
    read: Callable[[str], Iterator[tuple[str, T]]],
    store: Store,
    q: str,
    damaged: Callable[[], None],
    of: Callable[[Manifest], T],
) -> Iterator[tuple[str, T]]:
    """A stage's rows in entity order; from the first row that does not check out on, the
    sidecar manifests past the last good entity (the file's order is the entities' code point
    order, so nothing is given twice or left out)."""
    last: str | None = None
    try:
        for eid, value in read(q):
            last = eid
            yield eid, value
    except Damaged:
        damaged()
        rest = sorted(
            (m.entity, of(m))
            for m in store.iter_manifests()
            if m.stage == q and (last is None or m.entity > last)
        )
        yield from rest


def file_map(db: IndexDB, damaged: Callable[[], None]) -> LazyMap[bytes]:
    """The stat/hash cache: relpath -> packed entry, read from `db` on demand."""

    def fetch(rel: str) -> bytes | None:
        try:
            return db.file_entry(rel)
        except Damaged:
            damaged()
            return None

    def scan() -> Iterator[tuple[str, bytes]]:
        try:
            yield from db.file_entries()
        except Damaged:
            damaged()  # the rest reads as absent: hashed again when asked

    def keys() -> Iterator[str]:
        return (rel for rel, _ in scan())

    return LazyMap(fetch, scan, keys, FILES_CACHED)
