"""The index cache on disk: a whole snapshot plus an append-only journal of what changed since.

`index.pickle` holds a full snapshot tagged with a random token; `index.journal` starts with
the same token and then holds frames (length, xxh3-64 checksum, pickled changes), one per save.
A save appends the changes since the previous save (O(changed), one fsync); when the journal
grows past a fraction of the snapshot, the next save writes a new snapshot and an empty journal
(compaction: amortised O(changed) too). A reader trusts the pair only when the tokens agree and
every frame is whole and checks out; anything else reads as "no cache" (rebuilt from manifests).
"""

from __future__ import annotations

import copy
import os
import pickle
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash

from eventrunner.state.files import atomic_write

C = TypeVar("C")

if TYPE_CHECKING:
    from eventrunner.state.index import Index

MAGIC = b"ERJ1"
CACHE_VERSION = 12  # of the snapshot's layout: another version is rebuilt
_HEAD = 4 + 16  # magic + token
_FRAME = 4 + 8  # payload length + checksum
COMPACT_FRACTION = 4  # a journal past 1/4 of the snapshot's size is folded into a new snapshot
COMPACT_MIN = 1 << 20  # ... and past 1 MB (small workspaces keep their journal a while)


class Torn(Exception):
    """The cache pair is not one consistent whole (torn frame, other token, bad checksum)."""


# What reading a missing, torn, damaged or foreign cache can raise: all mean "no cache".
UNREADABLE = (
    OSError,
    Torn,
    pickle.PickleError,
    EOFError,
    AttributeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
)


def read(cache: Path, journal: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(snapshot, frames in order); OSError when absent, Torn or a pickle error when damaged."""
    with open(cache, "rb") as fh:
        data = pickle.load(fh)
    if not isinstance(data, dict):
        raise Torn("not a snapshot")
    with open(journal, "rb") as fh:
        raw = fh.read()
    if raw[:4] != MAGIC or raw[4:_HEAD] != data.get("token"):
        raise Torn("journal of another snapshot")
    frames, pos = [], _HEAD
    while pos < len(raw):
        if pos + _FRAME > len(raw):
            raise Torn("torn frame header")
        size = int.from_bytes(raw[pos : pos + 4], "little")
        digest = raw[pos + 4 : pos + _FRAME]
        payload = raw[pos + _FRAME : pos + _FRAME + size]
        if len(payload) != size or xxhash.xxh3_64_digest(payload) != digest:
            raise Torn("torn or damaged frame")
        frames.append(pickle.loads(payload))
        pos += _FRAME + size
    return data, frames


def write_full(cache: Path, journal: Path, data: dict[str, Any]) -> None:
    """A new snapshot with a new token, then an empty journal for it (a crash in between leaves
    tokens that disagree: read refuses the pair)."""
    token = secrets.token_bytes(16)
    data = {**data, "token": token}
    atomic_write(cache, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), durable=True)
    atomic_write(journal, MAGIC + token, durable=True)


def append(journal: Path, changes: dict[str, Any]) -> None:
    """One frame of changes at the end of the journal, durable before returning."""
    payload = pickle.dumps(changes, protocol=pickle.HIGHEST_PROTOCOL)
    frame = len(payload).to_bytes(4, "little") + xxhash.xxh3_64_digest(payload) + payload
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(frame)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def needs_compaction(cache: Path, journal: Path) -> bool:
    """True when the next save should write a whole snapshot (no pair, or a long journal)."""
    try:
        base, tail = os.stat(cache).st_size, os.stat(journal).st_size
    except OSError:
        return True
    return tail > max(COMPACT_MIN, base // COMPACT_FRACTION)


def replay(
    frame: dict[str, Any],
    files: dict[str, bytes],
    manifests: dict[str, dict[str, Any]],
    failures: dict[str, dict[str, Any]],
    control: C,
) -> C:
    """Apply one frame to the maps (None: the record was deleted); returns the control."""
    for rel, entry in frame["files"].items():
        if entry is None:
            files.pop(rel, None)
        else:
            files[sys.intern(rel)] = entry
    for kind, maps in (("manifests", manifests), ("failures", failures)):
        for (q, eid), rec in frame[kind].items():
            if q not in maps:
                continue  # a stage no longer defined
            if rec is None:
                maps[q].pop(eid, None)
            else:
                maps[q][sys.intern(eid)] = rec
    return control if frame["control"] is None else frame["control"]


def whole(index: Index) -> dict[str, Any]:
    """Everything the cache holds, copied (entries are never changed in place)."""
    index.files.delta()  # a whole snapshot holds every change too
    return {
        "kind": "whole",
        "version": CACHE_VERSION,
        "files": index.files.snapshot(),
        "manifests": {s: dict(ms) for s, ms in index.manifests.items()},
        "failures": {
            s: {e: copy.copy(f) for e, f in fs.items()} for s, fs in index.failures.items()
        },
        "control": copy.deepcopy(index.control),
    }


def changes(index: Index) -> dict[str, Any]:
    """A frame: the records changed since the last save (None: deleted), copied."""
    fails = {k: index.failures[k[0]].get(k[1]) for k in index.delta_f}
    return {
        "kind": "changes",
        "files": index.files.delta(),
        "manifests": {k: index.manifests[k[0]].get(k[1]) for k in index.delta_m},
        "failures": {k: copy.copy(f) if f else None for k, f in fails.items()},
        "control": copy.deepcopy(index.control) if index.delta_control else None,
    }
