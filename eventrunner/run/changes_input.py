"""The worker's half of an incremental fan-in call: `Changes` values from marked input files.

The loop thread marks a call's files (run/evaluate.py `Evaluator.for_call`); here, in the worker,
the previous output is read and checked against its recorded hash, and only the added and
changed members are read. Anything that does not check out makes the call a full one.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from eventrunner.core.changes import CHANGED, PREVIOUS, REMOVED, SAME, Changes
from eventrunner.run.evaluate import InputFile
from eventrunner.state.files import read_file
from eventrunner.state.hashing import hash_bytes


def inner_type(annotation: Any) -> Any:
    """T of a `Changes[T]` annotation (str for a bare `Changes`)."""
    args = typing.get_args(annotation)
    return args[0] if args else str


def full_call(files: list[InputFile]) -> list[InputFile]:
    """The files of a full call: the current ones, unmarked (every member is read)."""
    return [replace(f, delta="") for f in files if f.delta not in (REMOVED, PREVIOUS)]


def previous_output(files: list[InputFile], root: Path) -> bytes | None:
    """The previous output's content when it still hashes as its manifest records (read in
    the worker, just before the call: an edit since the loop's check means a full call)."""
    prev = next((f for f in files if f.delta == PREVIOUS), None)
    if prev is None:
        return None
    try:
        data = read_file(root / prev.relpath)
    except OSError:  # gone, or a folder: no previous output to start from
        return None
    return data if hash_bytes(data) == prev.hash else None


def changes_value(
    files: list[InputFile], read: Callable[[InputFile], Any], previous: bytes | None
) -> Changes[Any]:
    """One `Changes` input from its files; `read` converts a member's file (only the added
    and changed ones are read). Unmarked files (a full call) are all added."""
    added: dict[str, Any] = {}
    changed: dict[str, Any] = {}
    removed: list[str] = []
    unchanged: list[str] = []
    for f in files:
        member = f.member or f.relpath
        if f.delta == SAME:
            unchanged.append(member)
        elif f.delta == REMOVED:
            removed.append(member)
        elif f.delta == CHANGED:
            changed[member] = read(f)
        elif f.delta != PREVIOUS:
            added[member] = read(f)
    count = len(added) + len(changed) + len(unchanged)
    return Changes(added, changed, tuple(removed), previous, count, tuple(unchanged))
