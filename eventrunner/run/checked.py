"""A full fan-in call's members hashed in the worker as it reads them, so that the manifest
records what the handler read (issue 15).

The loop hands a full call the members as its aggregate's cert knows them (O(members changed)
to gather), not hashed afresh: under `serve` an output edited by hand has no event, so a
member's file may differ from its cert. The worker reads each member once, hashes the bytes it
read and compares them with the hash it was given; only when one differs (or a file is gone)
does the call return what it read (`Written.inputs`), which its manifest records instead and
which makes the engine walk every member at the next check (run/evaluate.py: run_inputs).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventrunner.run.inputfile import InputFile
from eventrunner.state.files import read_file
from eventrunner.state.hashing import hash_bytes

PATHS = (Path, os.PathLike)  # member types the handler reads itself: not checked
Checked = dict[tuple[str, str], str | None]  # (input, relpath) -> hash as read, None: gone
Convert = Callable[[Path, Any, str, "bytes | None"], Any]


def member_type(annotation: Any) -> Any:
    """What a fan-in input's handler gets per member: T of `dict[str, T]`, a bare Path, bytes or
    str as given, else str."""
    args = typing.get_args(annotation)
    if len(args) == 2:
        return args[1]
    return annotation if annotation in (Path, bytes, str) else str


def members(
    root: Path,
    files: list[InputFile],
    annotation: Any,
    what: str,
    checked: Checked,
    convert: Convert,
) -> dict[str | None, Any]:
    """One fan-in input's handler value (member id -> converted content) from one read of each
    member, its hash compared with the one given: a differing or vanished member is noted in
    `checked` (a vanished one is left out, as a gather leaves out a missing file)."""
    out: dict[str | None, Any] = {}
    for f in files:
        path = root / f.relpath
        try:
            data = read_file(path)
        except (FileNotFoundError, NotADirectoryError):
            checked[(f.name, f.relpath)] = None
            continue
        except IsADirectoryError:
            convert(path, annotation, what, None)  # raises, saying to annotate it as a Path
            raise
        digest = hash_bytes(data)
        if digest != f.hash:
            checked[(f.name, f.relpath)] = digest
        out[f.member] = convert(path, annotation, what, data)
    return out


def as_read(files: list[InputFile], checked: Checked) -> dict[str, dict[str, str]]:
    """What the call read, as a manifest's inputs: the given files, with the checked ones'
    hashes as read and the vanished ones left out."""
    out: dict[str, dict[str, str]] = {}
    for f in files:
        digest = checked.get((f.name, f.relpath), f.hash)
        if digest is not None:
            out.setdefault(f.name, {})[f.relpath] = digest
    return out
