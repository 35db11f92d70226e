"""The worker's half of an incremental fan-in call: `Changes` values from marked input files.

The loop thread marks a call's files (`mark_for_call`: against the previous output's manifest);
in the worker, the previous output is read and checked against its recorded hash, and only the
added and changed members are read. Anything that does not check out makes a full call.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from eventrunner.core.changes import (
    ADDED,
    CHANGED,
    PREVIOUS,
    REMOVED,
    Changes,
    LazyIds,
    changes_inputs,
)
from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.core.records import Manifest
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.inputfile import InputFile, in_walk_order
from eventrunner.state.files import read_file
from eventrunner.state.hashing import hash_bytes, hash_path


def inner_type(annotation: Any) -> Any:
    """T of a `Changes[T]` annotation (str for a bare `Changes`)."""
    args = typing.get_args(annotation)
    return args[0] if args else str


def full_call(files: list[InputFile], order: list[str] | None = None) -> list[InputFile]:
    """The files of a full call: the current ones, unmarked (every member is read). An
    incremental call's list has its marks first, then every current file unmarked
    (mark_for_call): those, in the order of a full walk (`order`: the stage's input names)."""
    if files and files[0].delta:
        return in_walk_order([f for f in files if not f.delta], order or ())
    return [replace(f, delta="") for f in files if f.delta not in (REMOVED, PREVIOUS)]


def rehashed(
    files: list[InputFile], root: Path
) -> tuple[list[InputFile], dict[str, dict[str, str]]]:
    """The files of a full call made in the worker, hashed as they are now (an unchanged
    member's hash came from the loop's last check of it, not from a stat just before)."""
    out: list[InputFile] = []
    hashes: dict[str, dict[str, str]] = {}
    for f in files:
        g = replace(f, hash=hash_path(root / f.relpath))
        out.append(g)
        hashes.setdefault(g.name, {})[g.relpath] = g.hash
    return out, hashes


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
    files: list[InputFile],
    read: Callable[[InputFile], Any],
    previous: bytes | None,
    name: str | None = None,
    alone: bool = True,
) -> Changes[Any]:
    """One `Changes` input (`name`; None: every file is this input's) from the call's files;
    `read` converts a member's file (only the added and changed ones are read). On a full call
    (`previous` None) every member is added. An incremental call's marks come first, then every
    current file (mark_for_call): only the marks are looked at, the unchanged ids are listed on
    first use, and the count is the rest's length when the input is the stage's only one."""
    if previous is None:
        mine = [f for f in files if name is None or f.name == name]
        added = {f.member or f.relpath: read(f) for f in mine}
        return Changes(added, {}, (), None, len(added), ())
    added, changed = {}, {}
    removed: list[str] = []
    at = 0
    for at, f in enumerate(files):  # noqa: B007 (where the unmarked rest begins)
        if not f.delta:
            break
        if name is not None and f.name != name:
            continue
        if f.delta == REMOVED:
            removed.append(f.member or f.relpath)
        elif f.delta == ADDED:
            added[f.member or f.relpath] = read(f)
        elif f.delta == CHANGED:
            changed[f.member or f.relpath] = read(f)
    else:
        at = len(files)
    rest = files[at:]
    marked = set(added) | set(changed)

    def unchanged() -> tuple[str, ...]:
        ids = (f.member or f.relpath for f in rest if name is None or f.name == name)
        return tuple(sorted(i for i in ids if i not in marked))

    count = len(rest) if alone else sum(1 for f in rest if f.name == name)
    return Changes(added, changed, tuple(removed), previous, count, LazyIds(unchanged))


def incremental_possible(
    ev: Evaluator,
    qualname: str,
    eid: str,
    values: dict[str, str],
    func: Callable[..., Any] | None,
    executor: str = "thread",
) -> bool:
    """True when the call can be incremental: the handler takes every input of the stage as
    `Changes`, runs on the sync path, and its previous output can be trusted. Only then may
    the run's gather skip re-reading the members no event changed (their content is not read)."""
    if func is None or executor == "dask" or inspect.iscoroutinefunction(func):
        return False
    names = changes_inputs(func)
    stage = ev.ws.graph.stages[qualname]
    if not names or any(inp.name not in names for inp in stage.inputs):
        return False
    return _trusted_previous(ev, qualname, eid, values) is not None


def mark_for_call(
    ev: Evaluator,
    qualname: str,
    eid: str,
    values: dict[str, str],
    files: list[InputFile],
    func: Callable[..., Any],
    executor: str = "thread",
) -> list[InputFile]:
    """A call's input files, marked for an incremental call when the handler takes a `Changes`
    input and its previous output can be trusted; else `files` as they are (a full call). Only
    added and changed members are marked (an unmarked file of an incremental call is as its
    previous output saw it); removed members and the previous output are appended. On the loop
    thread, no file read: O(changed) from an aggregate's cert, O(members) dict lookups without."""
    names = changes_inputs(func)
    if not names or executor == "dask" or inspect.iscoroutinefunction(func):
        return files  # an incremental call needs the sync path of invoke.prepare_and_call
    previous = _trusted_previous(ev, qualname, eid, values)
    if previous is None:
        return files
    relpath, m = previous
    cert = ev.certs.valid(qualname, eid, m)
    diff = cert.delta() if cert is not None else _delta(m, files)
    if _broken(m):  # its member table did not check out (found reading it): start afresh
        return files
    marks: dict[tuple[str, str], InputFile] = {}
    extra: list[InputFile] = []
    stage = ev.ws.graph.stages[qualname]
    for (name, path), (old, f) in diff.items():
        if name not in names:
            return files  # another input changed: the previous output is outdated
        if f is not None:
            marks[(name, path)] = replace(f, delta=ADDED if old is None else CHANGED)
        elif old is not None:
            inp = stage.input(name)
            mv = inp.pattern.match(path)
            member = entity_id(inp.aggregated, {v: mv[v] for v in inp.aggregated}) if mv else path
            extra.append(InputFile(name, member, path, old, REMOVED))
    # Marks first (the worker looks at those only), then every current file as it is.
    prev = InputFile("", None, relpath, m.outputs[relpath], PREVIOUS)
    return [*marks.values(), *extra, prev, *files]


def _delta(
    m: Manifest, files: list[InputFile]
) -> dict[tuple[str, str], tuple[str | None, InputFile | None]]:
    """(input, relpath) -> (hash in the manifest, file now) for each file that differs."""
    recorded = m.inputs
    out: dict[tuple[str, str], tuple[str | None, InputFile | None]] = {}
    kept: dict[str, int] = {}
    for f in files:
        old = recorded.get(f.name, {}).get(f.relpath)
        if old != f.hash:
            out[(f.name, f.relpath)] = (old, f)
        if old is not None:
            kept[f.name] = kept.get(f.name, 0) + 1
    for name, paths in recorded.items():
        if kept.get(name, 0) < len(paths):  # some went away: find which (rare)
            now = {f.relpath for f in files if f.name == name}
            out.update({(name, p): (h, None) for p, h in paths.items() if p not in now})
    return out


def _trusted_previous(
    ev: Evaluator, qualname: str, eid: str, values: dict[str, str]
) -> tuple[str, Manifest] | None:
    """(output relpath, manifest) of a previous output an incremental call may start from:
    made by today's code and params, not invalidated since, and on disk as recorded (an output
    renamed in place whose manifest a crash kept out reads as edited: not trusted)."""
    stage = ev.ws.graph.stages[qualname]
    m = ev.index.manifests[qualname].get(eid)
    if m is None or stage.fanout_vars:
        return None
    if m.code != ev.ws.code[qualname] or m.params != ev.ws.params[qualname]:
        return None
    if ev.index.control.invalidated_at(qualname, eid) > m.finished_ns:
        return None
    if _broken(m):
        return None
    relpath = stage.output.format(values)
    recorded = m.outputs.get(relpath)
    if recorded is None or ev.index.files.hash(relpath) != recorded:
        return None
    return relpath, m


def _broken(m: Manifest) -> bool:
    """True when a member table of the manifest was read and did not check out (its log)."""
    return any(mem.broken for mem in m.members.values())
