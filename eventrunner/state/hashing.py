"""Content hashes: xxh3-128 hex digests of bytes, files, folder trees, JSON values and lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import xxhash

from eventrunner.core.names import TMP_PREFIX  # tree hashes skip our temps: in-flight writes

CHUNK = 1 << 20
"""Files are read in chunks of this size; smaller files are read (and hashed) in one go."""

# Entry kinds in a tree hash. "other" covers fifos, sockets and devices: opening them could
# block, so only their existence and name count.
_FILE, _DIR, _LINK, _OTHER = "f", "d", "l", "o"
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def hash_bytes(data: bytes) -> str:
    """Hex digest of `data`."""
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: Path | str) -> str:
    """Hex digest of a file's content (following symlinks); equals `hash_bytes(content)`."""
    # os.open/os.read rather than open(): no buffered-reader object per file, which is most
    # of the cost when a tree holds thousands of small files.
    fd = os.open(path, _OPEN_FLAGS)
    try:
        data = os.read(fd, CHUNK)
        more = os.read(fd, CHUNK) if data else b""
        if not more:
            return xxhash.xxh3_128_hexdigest(data)
        hasher = xxhash.xxh3_128(data)
        while more:
            hasher.update(more)
            more = os.read(fd, CHUNK)
        return hasher.hexdigest()
    finally:
        os.close(fd)


def hash_tree(path: Path | str) -> str:
    """Hex digest of a folder: relative paths, entry kinds, file contents and symlink targets.

    Entries are taken in sorted order of their "/"-separated relative paths, so the digest
    does not depend on the platform or on directory listing order. Modification times and
    permissions do not count; names starting with ".er-tmp-" are skipped; symlinks are not
    followed (their target text counts). An empty folder has a digest of its own.
    """
    entries: list[tuple[str, str, str]] = []
    stack: list[tuple[str, str]] = [(os.fspath(path), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                if name.startswith(TMP_PREFIX):
                    continue
                rel = prefix + name
                if entry.is_symlink():
                    entries.append((rel, _LINK, os.readlink(entry.path)))
                elif entry.is_dir():
                    entries.append((rel, _DIR, ""))
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file():
                    entries.append((rel, _FILE, hash_file(entry.path)))
                else:
                    entries.append((rel, _OTHER, ""))
    entries.sort()
    hasher = xxhash.xxh3_128(b"tree\0")
    for rel, kind, payload in entries:
        # surrogateescape keeps undecodable file names hashable and distinct.
        rel_b = os.fsencode(rel)
        payload_b = os.fsencode(payload)
        hasher.update(
            b"%d:%s%s%d:%s" % (len(rel_b), rel_b, kind.encode(), len(payload_b), payload_b)
        )
    return hasher.hexdigest()


def hash_path(path: Path | str) -> str:
    """Hex digest of a file or a folder; raises FileNotFoundError if `path` does not exist."""
    if os.path.isdir(path):
        return hash_tree(path)
    return hash_file(path)


def canonical_json(value: object) -> str:
    """JSON text with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_json(value: object) -> str:
    """Hex digest of a JSON-serialisable value, independent of key order (used for params)."""
    return hash_bytes(canonical_json(value).encode())


def combine(*parts: str) -> str:
    """Hex digest of several texts or digests; unambiguous, as each part is length-prefixed."""
    hasher = xxhash.xxh3_128()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        hasher.update(b"%d:" % len(data))
        hasher.update(data)
    return hasher.hexdigest()
