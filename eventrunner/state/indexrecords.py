"""The index cache's records as bytes: each value sealed with an xxh3-64 checksum of its key and
bytes, so a damaged value, or one read under another key, reads as `Damaged`, never as a record.
"""

from __future__ import annotations

import marshal
import pickle
from typing import Any

import xxhash

from eventrunner.core.records import Failure, Manifest

SUM = 8
_REBUILD: Any = None


class Damaged(Exception):
    """A value, a page or the file itself does not check out: nothing read from it is trusted."""


def seal(key: str, data: bytes) -> bytes:
    return xxhash.xxh3_64_digest(key.encode("utf-8", "surrogatepass") + b"\0" + data) + data


def unseal(key: str, value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) < SUM:
        raise Damaged(key)
    data = value[SUM:]
    if xxhash.xxh3_64_digest(key.encode("utf-8", "surrogatepass") + b"\0" + data) != value[:SUM]:
        raise Damaged(key)
    return data


def mkey(q: str, eid: str) -> str:
    return q + "\0" + eid


def _rebuild() -> Any:
    """The function a Manifest's compact state rebuilds it with (its __reduce__'s)."""
    global _REBUILD
    if _REBUILD is None:
        _REBUILD = Manifest("s", "e", {}, "", "", {}, {}, 0.0, 0, 0.0).__reduce__()[0]
    return _REBUILD


def pack_manifest(m: Manifest) -> tuple[bytes, bytes]:
    """(outs, rec): the output and dropped paths alone (for narrow scans), and the record: its
    compact state marshalled (interned strings come back interned, so the paths, hashes, code
    and params of decoded manifests are shared; an aggregate's member tables by reference), or
    pickled if it holds anything else."""
    key = mkey(m.stage, m.entity)
    outs = marshal.dumps((tuple(m.output_paths), tuple(m.dropped)))
    rebuild, state = m.__reduce__()
    try:
        if rebuild is not _rebuild():
            raise ValueError("another shape")
        rec = b"M" + marshal.dumps(state)
    except ValueError:
        rec = b"P" + pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)
    return seal(key, outs), seal(key, rec)


def unpack_manifest(q: str, eid: str, rec: Any) -> Manifest:
    """The manifest of a row (Damaged unless it checks out and is the row's)."""
    data = unseal(mkey(q, eid), rec)
    try:
        rest = data[1:]
        m = _rebuild()(*marshal.loads(rest)) if data[:1] == b"M" else pickle.loads(rest)
    except (pickle.PickleError, ValueError, EOFError, TypeError, AttributeError) as exc:
        raise Damaged(mkey(q, eid)) from exc
    if not isinstance(m, Manifest) or m.stage != q or m.entity != eid:
        raise Damaged(mkey(q, eid))
    return m


def pack_failure(f: Failure) -> bytes:
    fields = tuple(getattr(f, k) for k in Failure.__dataclass_fields__)
    return seal(mkey(f.stage, f.entity), marshal.dumps(fields))


def unpack_failure(q: str, eid: str, rec: Any) -> Failure:
    try:
        return Failure(*marshal.loads(unseal(mkey(q, eid), rec)))
    except (ValueError, EOFError, TypeError) as exc:
        raise Damaged(mkey(q, eid)) from exc
