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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventrunner.core.changes import changes_inputs
from eventrunner.core.graph import Stage
from eventrunner.run.inputfile import InputFile
from eventrunner.state.files import read_file
from eventrunner.state.hashing import hash_bytes, hash_path

Checked = dict[tuple[str, str], str | None]  # (input, relpath) -> hash as read, None: gone
Convert = Callable[[Path, Any, str, "bytes | None"], Any]


def worker_checks(func: Callable[..., Any] | None, stage: Stage, executor: str) -> bool:
    """True when a full call of `stage` hashes its fan-in members in the worker: any handler
    on the thread or process executor whose fan-in inputs are plain (a `Changes` input's full
    call is not checked, nor is a Dask task, which reads on another host)."""
    if func is None or executor == "dask":
        return False
    names = changes_inputs(func)
    return not any(inp.name in names for inp in stage.inputs if inp.aggregated)


def members(
    root: Path,
    files: list[InputFile],
    annotation: Any,
    what: str,
    checked: Checked,
    convert: Convert,
) -> dict[str | None, Any]:
    """One fan-in input's handler value (member id -> converted file) from one read of each
    member, its hash compared with the one given: a differing or vanished member is noted in
    `checked` (a vanished one is left out, as a gather leaves out a missing file)."""
    out: dict[str | None, Any] = {}
    as_path = annotation is Path or annotation is os.PathLike
    for f in files:
        path = root / f.relpath
        try:
            data = None if as_path else read_file(path)
            digest = hash_path(path) if data is None else hash_bytes(data)
        except (FileNotFoundError, NotADirectoryError):
            checked[(f.name, f.relpath)] = None
            continue
        except IsADirectoryError:
            data, digest = None, hash_path(path)  # convert() says what to annotate instead
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
