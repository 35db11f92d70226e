"""What travels between the coordinator and Dask workers, and the coordinator's side of it.

A call goes out as a `WireCall`: the stage, the handler's place in a code bundle, the code
identity the coordinator records, and its input files as `Blob`s (bytes; a folder as a tar;
with `shared_fs` a large file as its path). It comes back as a `WireResult`: the outputs as
bytes, or the error as data. `write_outputs` turns a result into temp files beside their final
paths and hashes them here, exactly as a local executor does, so the commit, the manifests and
the outputs are the same whichever executor ran the handler.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventrunner.core.errors import HandlerError, PermanentError, RetryLater
from eventrunner.core.graph import Stage
from eventrunner.run.bundle import pack_tree, unpack_tree
from eventrunner.run.capture import attach
from eventrunner.run.executors import Call
from eventrunner.run.inputfile import InputFile
from eventrunner.run.invoke import Written, output_path
from eventrunner.run.process_pool import RemoteTraceback
from eventrunner.state.files import read_file, temp_path, write_file
from eventrunner.state.hashing import hash_bytes, hash_path

# Blob kinds
FILE, TREE, SYMLINK, SHARED, LARGE = "file", "tree", "symlink", "shared", "large"

INLINE_LIMIT = 8 << 20
"""Input files up to this size travel inside the task; larger ones as a path (shared_fs) or
scattered to the worker on their own (so the scheduler never carries them)."""


@dataclass(frozen=True, slots=True)
class Blob:
    """A file or folder at `relpath` under the data root, travelling with a call."""

    relpath: str
    kind: str  # FILE, TREE (tar bytes), SYMLINK (target), SHARED (read at the path), LARGE
    data: bytes = b""
    mode: int | None = None  # permission bits of an output file the handler wrote itself
    ref: str = ""  # LARGE: its key in the task's scattered blobs


@dataclass(frozen=True, slots=True)
class WireCall:
    """One handler call as a worker receives it."""

    key: str  # unique per attempt (and per resubmission after a lost scheduler)
    stage: Stage
    spec: str  # the handler as the pipeline names it
    bundle: str  # hash of the bundle holding its module
    module: str  # the module file's path inside the bundle
    dotted: str  # the module's dotted name
    function: str
    code: str  # the identity the coordinator records ("": not checked)
    files: list[InputFile]
    payload: list[Blob]  # every input file, and the previous output when there is one
    values: dict[str, str]
    attempt: int
    shared_root: str | None  # the data root as workers see it (shared_fs), for SHARED blobs


@dataclass(slots=True)
class WireResult:
    """What a worker sends back for one call: outputs, or an error as data."""

    key: str
    outputs: list[Blob] = field(default_factory=list)
    error_type: str = ""  # the exception's class name ("" when the call succeeded)
    error_text: str = ""
    error_kind: str = ""  # "permanent", "retry" or "" (what a stand-in must subclass)
    error: bytes | None = None  # the exception pickled, when it pickles
    retry_after: float | None = None
    traceback: str = ""
    output: str = ""  # what the handler printed and logged (run/capture.py), masked
    seconds: float = 0.0  # the call's run time on the worker
    worker: str = ""  # the worker's address
    pid: int = 0

    @property
    def ok(self) -> bool:
        return not self.error_type


def pack_file(
    root: Path, relpath: str, shared: bool, blobs: dict[str, bytes], prefix: str = ""
) -> Blob | None:
    """The blob for one file or folder under `root` (None when it does not exist); a large
    file goes by path when workers share the filesystem, else into `blobs` (at prefix+relpath)."""
    path = root / relpath
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if os.path.isdir(path):
        return Blob(relpath, TREE, pack_tree(path))
    if st.st_size > INLINE_LIMIT:
        if shared:
            return Blob(relpath, SHARED)
        blobs[prefix + relpath] = read_file(path)
        return Blob(relpath, LARGE, ref=prefix + relpath)
    return Blob(relpath, FILE, read_file(path))


def pack_inputs(call: Call, shared: bool, blobs: dict[str, bytes], prefix: str) -> list[Blob]:
    """The blobs of a call's input files and of its previous output (a handler may read it
    through ctx.final_path); large files go into `blobs`, to be scattered on their own."""
    payload: list[Blob] = []
    for f in call.files:
        blob = pack_file(call.root, f.relpath, shared, blobs, prefix)
        if blob is None:
            raise FileNotFoundError(f"input {f.name}: {f.relpath} vanished before it was sent")
        payload.append(blob)
    stage = call.stage
    if not stage.fanout_vars:
        previous = pack_file(call.root, stage.output.format(call.values), shared, blobs, prefix)
        if previous is not None:
            payload.append(previous)
    return payload


def wire_call(call: Call, key: str, bundle: str, payload: list[Blob], shared: bool) -> WireCall:
    """The call as a worker receives it, its handler found in `bundle`."""
    ref = call.handler
    return WireCall(
        key=key,
        stage=call.stage,
        spec=ref.spec,
        bundle=bundle,
        module=ref.path.relative_to(ref.root).as_posix(),
        dotted=ref.module,
        function=ref.function,
        code=call.code,
        files=call.files,
        payload=payload,
        values=call.values,
        attempt=call.attempt,
        shared_root=str(call.root) if shared else None,
    )


def write_outputs(result: WireResult, root: Path) -> Written:
    """The result's outputs as temp files beside their final paths under `root`, hashed."""
    temps: list[tuple[Path, Path]] = []
    hashes: dict[str, str] = {}
    try:
        for blob in result.outputs:
            final = output_path(root, blob.relpath)
            tmp = temp_path(final)
            temps.append((tmp, final))
            if blob.kind == TREE:
                unpack_tree(blob.data, tmp)
                hashes[blob.relpath] = hash_path(tmp)
            elif blob.kind == SYMLINK:
                os.symlink(os.fsdecode(blob.data), tmp)
                hashes[blob.relpath] = hash_path(tmp)
            else:
                write_file(tmp, blob.data)
                if blob.mode is not None:
                    os.chmod(tmp, blob.mode)
                hashes[blob.relpath] = hash_bytes(blob.data)  # from memory, as locally
    except BaseException:
        Written(temps, {}).discard()
        raise
    return Written(temps, hashes, result.output)


def write_all(items: Sequence[tuple[Any, WireResult]]) -> dict[int, Written | Exception]:
    """(In a thread.) write_outputs for each (call holder, result) whose holder has a `call`;
    by id() of the holder, the Written or the error."""
    out: dict[int, Written | Exception] = {}
    for holder, result in items:
        try:
            out[id(holder)] = write_outputs(result, holder.call.root)
        except Exception as exc:
            out[id(holder)] = exc
    return out


def error_of(result: WireResult) -> Exception:
    """The exception a failed call raised on its worker, as the engine should record it: the
    original when it unpickles here, else a stand-in of the same name (and kind)."""
    exc: object = None
    if result.error is not None:
        try:
            exc = pickle.loads(result.error)
        except Exception:  # its class exists only on the worker (a handler module's own)
            exc = None
    if not isinstance(exc, Exception):
        exc = _stand_in(result)
    exc.__cause__ = RemoteTraceback(result.traceback)
    attach(exc, result.output)
    return exc


def _stand_in(result: WireResult) -> Exception:
    base: type[Exception] = {"permanent": PermanentError, "retry": RetryLater}.get(
        result.error_kind, HandlerError
    )
    # Named as on the worker: the failure reads as it would with a local executor.
    name = result.error_type or "HandlerError"
    cls: type[Exception] = type(name, (base,), {"__module__": "eventrunner.remote"})
    if issubclass(cls, RetryLater):
        return cls(result.error_text, result.retry_after)
    return cls(result.error_text)
