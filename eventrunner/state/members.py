"""Member logs on disk: the files an aggregate's manifest refers to for its member tables.

A log is JSON lines beside the manifest: a snapshot line (relpath -> hash of every member), then
one line per commit of what changed (relpath -> new hash, null: removed). A manifest covers the
log's first `length` bytes. A commit writes its line at the previous manifest's length (bytes
after it are a crash's leftovers: cut off) before the group commit's barrier, and the manifest
is renamed in place after it, so a crash at any instant leaves the manifest on disk with a log
that holds all it covers. Reading replays the covered bytes and checks the count and digest
(core/members.py); a log that does not check out reads as a broken (empty) table.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from eventrunner.core import members as core_members
from eventrunner.core.members import Members
from eventrunner.core.records import Manifest


def read_log(m: Members) -> dict[str, str]:
    """The table a member log holds in its first `m.length` bytes (ValueError if short or
    not JSON lines of relpath -> hash)."""
    with open(os.path.join(m.folder, m.file), "rb") as fh:
        data = fh.read(m.length)
    if len(data) != m.length or (data and not data.endswith(b"\n")):
        raise ValueError(f"member log {m.file}: shorter than its manifest records")
    table: dict[str, str] = {}
    intern = sys.intern
    for line in data.splitlines():
        changes = json.loads(line)
        if not isinstance(changes, dict):
            raise ValueError(f"member log {m.file}: not a table")
        for path, digest in changes.items():
            if digest is None:
                table.pop(path, None)
            elif isinstance(digest, str):
                table[intern(path)] = intern(digest)
            else:
                raise ValueError(f"member log {m.file}: {path}: not a hash")
    return table


core_members.READER = read_log


def stem(manifest_file: str, name: str) -> str:
    """The member log names of an input of a manifest file (`<entity>.<input>`)."""
    return f"{manifest_file.removesuffix('.json')}.{name}"


def write_logs(manifest: Manifest, folder: str) -> None:
    """Write the member log lines of a manifest about to be committed (before its barrier and
    its rename). A snapshot starts a new file (the one two generations back is deleted: the
    manifest on disk refers to the previous one until this one is in place)."""
    for mem in manifest.members.values():
        mem.folder = folder
        if mem.length > mem.base:
            continue  # written already (a commit retried with the same manifest)
        path = os.path.join(folder, mem.file)
        delta = mem.pending()
        if delta is None:
            line = _line(mem.table())
            with open(path, "wb") as fh:
                fh.write(line)
            mem.written(len(line))
            old = f"{mem.file.rsplit('.', 2)[0]}.{mem.gen - 2}.members"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, old))
            continue
        line = _line(delta)
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.fstat(fd).st_size < mem.base:
                raise OSError(f"member log {path}: shorter than its manifest records")
            os.ftruncate(fd, mem.base)
            os.pwrite(fd, line, mem.base)
        finally:
            os.close(fd)
        mem.written(mem.base + len(line))


def usable(mem: Members) -> bool:
    """True when a new line may follow this table's in its log: not found broken, and the log
    holds at least what the manifest covers (else the next commit writes a snapshot)."""
    if mem.broken or not mem.folder:
        return False
    try:
        return os.stat(os.path.join(mem.folder, mem.file)).st_size >= mem.length
    except OSError:
        return False


def remove_logs(manifest_path: str) -> None:
    """Delete every member log of a manifest (the state is forgotten: prune)."""
    folder, name = os.path.split(manifest_path)
    prefix = name.removesuffix(".json") + "."
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and entry.name.endswith(".members"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _line(table: object) -> bytes:
    return json.dumps(table, separators=(",", ":")).encode() + b"\n"
