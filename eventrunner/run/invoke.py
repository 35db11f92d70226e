"""Run one handler for one entity: convert inputs by annotation, call it, write outputs to temp files.

Nothing here renames into place: the commit (store + batch durability) is the caller's job, so a
crash or a failure at any point leaves only `.er-tmp-*` files behind.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventrunner.core.changes import PREVIOUS, REMOVED, Changes
from eventrunner.core.errors import HandlerError, NeedFullCall, PermanentError
from eventrunner.core.graph import Stage
from eventrunner.core.patterns import entity_id, parse_entity_id
from eventrunner.core.redact import SECRETS
from eventrunner.run import changes_input as delta
from eventrunner.run import checked as checking
from eventrunner.run.capture import HandlerLog, attach, capturing, guard_logging
from eventrunner.run.context import Context
from eventrunner.run.inputfile import InputFile
from eventrunner.state.contain import resolve_inside
from eventrunner.state.files import read_file, remove_path, temp_path, write_file
from eventrunner.state.hashing import hash_bytes, hash_path

if TYPE_CHECKING:
    from pydantic import BaseModel

log = logging.getLogger("eventrunner.executor")


@dataclass
class Written:
    """Outputs written to temp paths, ready to be committed."""

    temps: list[tuple[Path, Path]]  # (temp, final)
    hashes: dict[str, str]  # relpath -> hash
    output: str = ""  # what the attempt printed and logged (run/capture.py), secrets masked
    # What the call read, when it is not what the loop gathered (an incremental call made full
    # in the worker, a fan-in member that differs from its cert: run/checked.py): the hashes its
    # manifest records instead.
    inputs: dict[str, dict[str, str]] | None = None

    def discard(self) -> None:
        """Remove the temps of an abandoned run."""
        for tmp, _ in self.temps:
            remove_path(tmp)


@dataclass(frozen=True)
class _Shape:
    """What a handler's signature says, read once per function object (not per call: the
    signature and type hints cost more than a small handler's whole run)."""

    ctx: bool  # first parameter is `ctx`
    hints: dict[str, Any]
    var_kw: str | None  # the name of `**inputs`, if any


_shapes: dict[Callable[..., Any], _Shape] = {}


def _shape(func: Callable[..., Any]) -> _Shape:
    found = _shapes.get(func)
    if found is None:
        try:
            hints = typing.get_type_hints(func)
        except Exception:
            hints = dict(getattr(func, "__annotations__", {}))
        params = inspect.signature(func).parameters
        var_kw = next((p.name for p in params.values() if p.kind is p.VAR_KEYWORD), None)
        found = _Shape(next(iter(params), None) == "ctx", hints, var_kw)
        if len(_shapes) > 4096:  # handlers re-imported many times in a long serve
            _shapes.clear()
        _shapes[func] = found
    return found


def wants_ctx(func: Callable[..., Any]) -> bool:
    """True when the handler's first parameter is `ctx`."""
    return _shape(func).ctx


def _base_model() -> type[BaseModel] | None:
    """pydantic's BaseModel when pydantic is imported, else None: a model annotation or value
    exists only once its module imported pydantic, and a run of plain handlers never pays the
    import (~0.15 s of CPU)."""
    main = sys.modules.get("pydantic.main")  # where BaseModel is defined
    model: type[BaseModel] | None = getattr(main, "BaseModel", None) if main else None
    return model


def convert(path: Path, annotation: Any, what: str, data: bytes | None = None) -> Any:
    """Read one input file in the form its annotation asks for (`data`: its bytes, when the
    caller read them already: run/checked.py)."""
    try:
        if annotation is Path or annotation is os.PathLike:
            return path
        if annotation is bytes:
            return read_file(path) if data is None else data
        if annotation in (str, None, Any, inspect.Parameter.empty):
            return path.read_text(encoding="utf-8") if data is None else _text(data)
        origin = typing.get_origin(annotation) or annotation
        if origin in (dict, list):
            return json.loads(read_file(path) if data is None else data)
        model = _base_model()
        if model and isinstance(annotation, type) and issubclass(annotation, model):
            return annotation.model_validate_json(read_file(path) if data is None else data)
        return path.read_text(encoding="utf-8") if data is None else _text(data)
    except IsADirectoryError:
        raise PermanentError(
            f"{what}: {path.name} is a folder; annotate the parameter as pathlib.Path"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        # Bad input that no retry fixes; a new version of the input starts a fresh attempt.
        raise PermanentError(
            f"{what}: cannot read {path.name} as {getattr(annotation, '__name__', annotation)}: {exc}"
        ) from exc


def _text(data: bytes) -> str:
    """`data` as read_text decodes a file: strict UTF-8, universal newlines."""
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def build_kwargs(
    stage: Stage,
    func: Callable[..., Any],
    files: list[InputFile],
    root: Path,
    previous: bytes | None = None,
    checked: checking.Checked | None = None,
) -> dict[str, Any]:
    """Keyword arguments for the handler: map inputs as one value, fan-in inputs as dict by
    member id, `Changes` inputs as what changed since `previous` (the previous output, checked)
    for files marked for an incremental call (run/changes_input.py); else every member.
    `checked`: fan-in members are hashed as read, those that differ noted (run/checked.py)."""
    if previous is None and any(f.delta for f in files):
        files = delta.full_call(files, [inp.name for inp in stage.inputs])
    kwargs: dict[str, Any] = {}
    for inp in stage.inputs:
        ann = annotation_of(func, inp.name)
        if ann is Changes or typing.get_origin(ann) is Changes:
            if not inp.aggregated:
                raise PermanentError(f"input {inp.name}: Changes[...] is for fan-in inputs only")
            read = partial(_read_member, root, delta.inner_type(ann), inp.name)
            alone = len(stage.inputs) == 1
            kwargs[inp.name] = delta.changes_value(files, read, previous, inp.name, alone)
            continue
        mine = [f for f in files if f.name == inp.name]
        if inp.aggregated:
            inner = checking.member_type(ann)
            if checked is not None and inner not in checking.PATHS:
                kwargs[inp.name] = checking.members(root, mine, inner, inp.name, checked, convert)
                continue
            kwargs[inp.name] = {
                f.member: convert(root / f.relpath, inner, inp.name)
                for f in mine
                if f.delta not in (REMOVED, PREVIOUS)
            }
        else:
            if not mine:
                raise HandlerError(f"input {inp.name} has no file")
            kwargs[inp.name] = convert(root / mine[0].relpath, ann, inp.name)
    return kwargs


def annotation_of(func: Callable[..., Any], name: str) -> Any:
    """The annotation input `name` is read by: its parameter's, else that of `**inputs: T`,
    which annotates every input with no parameter of its own (stock handlers)."""
    shape = _shape(func)
    default = shape.hints.get(shape.var_kw) if shape.var_kw else None
    return shape.hints.get(name, default)


def _read_member(root: Path, annotation: Any, what: str, f: InputFile) -> Any:
    return convert(root / f.relpath, annotation, what)


def encode(value: Any, what: str) -> bytes:
    """Bytes to store for a handler's return value."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    model = _base_model()
    if model and isinstance(value, model):
        return (value.model_dump_json(indent=2) + "\n").encode()
    if isinstance(value, dict | list):
        return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode()
    raise HandlerError(
        f"{what}: cannot store a {type(value).__name__}; return str, bytes, dict, list or a pydantic model"
    )


_ready_dirs: set[Path] = set()


def output_path(root: Path, relpath: str) -> Path:
    """root/relpath for an output: checked inside the root and its folder created, once per folder."""
    final = root / relpath
    parent = final.parent
    if parent not in _ready_dirs:
        resolve_inside(root, relpath)  # refuses symlinked folders that lead outside the data root
        parent.mkdir(parents=True, exist_ok=True)
        _ready_dirs.add(parent)
    elif final.is_symlink():
        resolve_inside(root, relpath)
    return final


def _write_temp(final: Path, data: bytes) -> Path:
    tmp = temp_path(final)
    try:
        write_file(tmp, data)
    except FileNotFoundError:  # the folder was removed since we created it
        _ready_dirs.discard(final.parent)
        final.parent.mkdir(parents=True, exist_ok=True)
        write_file(tmp, data)
    return tmp


def store_result(
    stage: Stage, values: dict[str, str], result: Any, ctx: Context, root: Path
) -> Written:
    """Write the handler's result to temp files beside their final paths and hash them."""
    temps: list[tuple[Path, Path]] = []
    hashes: dict[str, str] = {}
    if stage.fanout_vars:
        if not isinstance(result, Mapping):
            raise HandlerError(
                f"fan-out stage {stage.qualname} must return a mapping of {', '.join(stage.fanout_vars)} to contents"
            )
        try:
            for key, content in result.items():
                out_values = dict(values)
                out_values.update(_fanout_values(stage, key))
                relpath = stage.output.format(out_values)
                final = output_path(root, relpath)
                data = encode(content, f"{stage.qualname}[{key}]")
                temps.append((_write_temp(final, data), final))
                hashes[relpath] = hash_bytes(data)
        except BaseException:
            Written(temps, {}).discard()  # the items written before the failing one
            raise
        return Written(temps, hashes)
    assert ctx.output_path is not None and ctx.final_path is not None
    relpath = ctx._relpath or stage.output.format(values)
    if result is None:
        if not ctx.output_path.exists():
            raise HandlerError(
                f"{stage.qualname} returned None but wrote nothing to ctx.output_path"
            )
        temps.append((ctx.output_path, ctx.final_path))
        hashes[relpath] = hash_path(ctx.output_path)
        return Written(temps, hashes)
    data = encode(result, stage.qualname)
    temps.append((_write_returned(ctx.output_path, ctx.final_path, data), ctx.final_path))
    hashes[relpath] = hash_bytes(data)  # hashed from memory: no read-back
    return Written(temps, hashes)


def _write_returned(tmp: Path, final: Path, data: bytes) -> Path:
    """Write a returned value to ctx.output_path when the handler left nothing there (the
    usual case: one exclusive create, no lstat first), else to a fresh temp: whatever the
    handler put there (a file, a link, a folder) is removed, as the returned value wins."""
    try:
        write_file(tmp, data, exclusive=True)
    except FileExistsError:
        Written([(tmp, tmp)], {}).discard()
    except FileNotFoundError:  # the folder was removed since we created it
        pass
    else:
        return tmp
    return _write_temp(final, data)


def _fanout_values(stage: Stage, key: Any) -> dict[str, str]:
    names = stage.fanout_vars
    if isinstance(key, tuple):
        if len(key) != len(names):
            raise HandlerError(
                f"fan-out key {key!r} needs {len(names)} values ({', '.join(names)})"
            )
        return {n: str(v) for n, v in zip(names, key, strict=True)}
    if len(names) == 1:
        return {names[0]: str(key)}
    return parse_entity_id(names, str(key))


def make_context(stage: Stage, values: dict[str, str], attempt: int, root: Path) -> Context:
    """The ctx of one run; output_path is a temp path renamed into place on commit."""
    eid = entity_id(stage.entity_vars, values)
    relpath = None if stage.fanout_vars else stage.output.format(values)
    final = None if relpath is None else output_path(root, relpath)
    tmp = temp_path(final) if final is not None else None
    adapter = HandlerLog(
        logging.getLogger(f"eventrunner.handler.{stage.qualname}"), {"entity": eid}
    )
    return Context(
        stage=stage.name,
        pipeline=stage.pipeline,
        entity=dict(values),
        entity_id=eid,
        params=dict(stage.params),
        output_path=tmp,
        final_path=final,
        attempt=attempt,
        data_root=root,
        log=adapter,
        timeout=stage.timeout,
        _relpath=relpath,
    )


def call_sync(func: Callable[..., Any], ctx: Context | None, kwargs: dict[str, Any]) -> Any:
    """Call a handler (in a worker thread for sync handlers)."""
    return func(ctx, **kwargs) if ctx is not None else func(**kwargs)


def call_by_ref(
    stage: Stage, ref: Any, files: list[InputFile], values: dict[str, str], attempt: int, root: Path
) -> Written:
    """The sync path for a process pool: the worker imports the handler by path itself."""
    from eventrunner.workspace import loader

    guard_logging()  # this worker process logs on its own
    try:
        return prepare_and_call(stage, loader.load(ref), files, values, attempt, root)
    except BaseException as exc:
        # The secrets it read are known in this worker process only: mask them before the
        # exception (and the traceback text made from it) goes back to the server.
        SECRETS.redact_exception(exc)
        raise


def prepare_and_call(
    stage: Stage,
    func: Callable[..., Any],
    files: list[InputFile],
    values: dict[str, str],
    attempt: int,
    root: Path,
) -> Written:
    """Whole sync path, run in a worker thread: read inputs, call, write temps, hash; what
    the handler prints and logs meanwhile goes with the result (or the error)."""
    ctx = make_context(stage, values, attempt, root)
    with capturing() as capture:
        ctx.log.sink = capture
        try:
            result, read = _call_with_fallback(stage, func, ctx, files, root)
            written = store_result(stage, values, result, ctx, root)
            written.inputs = read
        except BaseException as exc:
            if ctx.output_path is not None and ctx.output_path.exists():
                Written([(ctx.output_path, ctx.output_path)], {}).discard()
            attach(exc, capture.text())
            raise
    written.output = capture.text()
    return written


def _call_with_fallback(
    stage: Stage, func: Callable[..., Any], ctx: Context, files: list[InputFile], root: Path
) -> tuple[Any, dict[str, dict[str, str]] | None]:
    """Call the handler; an incremental call whose previous output changed, or that raises
    NeedFullCall, is made full at once, over the members as read now (their hashes returned)."""
    given = ctx if wants_ctx(func) else None
    if not any(f.delta for f in files):
        checked: checking.Checked = {}
        kwargs = build_kwargs(stage, func, files, root, checked=checked)
        return call_sync(func, given, kwargs), checking.as_read(files, checked) if checked else None
    previous = delta.previous_output(files, root)
    if previous is not None:
        try:
            return call_sync(func, given, build_kwargs(stage, func, files, root, previous)), None
        except NeedFullCall:
            log.debug("%s %s: a full call asked for", stage.qualname, ctx.entity_id)
        if ctx.output_path is not None and os.path.lexists(ctx.output_path):
            Written([(ctx.output_path, ctx.output_path)], {}).discard()
    full, read = delta.rehashed(delta.full_call(files, [i.name for i in stage.inputs]), root)
    return call_sync(func, given, build_kwargs(stage, func, full, root)), read
