"""What runs on a Dask worker: one task runs a batch of handler calls, one after the other.

Each call runs in a scratch folder laid out like the data root (one per worker thread): its
input files (and its previous output, for ctx.final_path) written at their paths, or linked
to the shared workspace (`shared_fs`), and removed after the call. The handler is loaded from the code bundle the coordinator sent, with the
project's own loader, and refused (`CodeChanged`) when that code's identity is not the one the
coordinator will record for the output. Outputs go back as bytes; nothing here writes to the
workspace. Errors go back as data, never as a Dask task error, so only the coordinator decides
what they mean. An async handler runs in a loop of its own in this worker thread, never on the
worker's event loop. Importing this module does not import distributed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import shutil
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventrunner.core.errors import (
    CodeChanged,
    HandlerError,
    HandlerTimeout,
    PermanentError,
    RetryLater,
)
from eventrunner.run import invoke
from eventrunner.run.bundle import pack_tree, unpack_tree, unpacked
from eventrunner.run.capture import Capture, capturing
from eventrunner.run.context import Context
from eventrunner.run.dask_wire import (
    FILE,
    LARGE,
    SHARED,
    SYMLINK,
    TREE,
    Blob,
    WireCall,
    WireResult,
)
from eventrunner.state.files import read_file, write_file
from eventrunner.state.hashing import combine
from eventrunner.workspace import codeid, loader

KEEP_BUNDLES = 8  # bundles whose modules stay imported in a worker (older ones are forgotten)
WIPE_EVERY = 500  # calls between two wipes of a worker thread's scratch folder

_identities: dict[tuple[str, str, str, str], str] = {}
_loaded: OrderedDict[str, Path] = OrderedDict()
_lock = threading.Lock()


def run_batch(
    key: str,
    topic: str,
    calls: list[WireCall],
    bundles: dict[str, bytes],
    blobs: dict[str, bytes],
) -> list[WireResult]:
    """The Dask task `key`: say it started (on `topic`: timeouts count from now, and a
    shutdown no longer drops it), then run each call in turn; one result per call."""
    _log_start(topic, key)
    where, pid = _worker_address(), os.getpid()
    results = []
    for call in calls:
        result = run_call(call, bundles, blobs)
        result.worker, result.pid = where, pid
        results.append(result)
    return results


def run_call(call: WireCall, bundles: dict[str, bytes], blobs: dict[str, bytes]) -> WireResult:
    """One call in this thread's scratch folder; what it put there is removed afterwards."""
    t0 = time.perf_counter()
    scratch = _scratch()
    placed: list[Path] = []
    capture = None
    try:
        func = _load(call, _bundle_root(call.bundle, bundles[call.bundle]))
        _materialise(call, scratch, blobs, placed)
        with capturing() as capture:
            outputs = _call(call, func, scratch, capture)
        done = time.perf_counter() - t0
        return WireResult(call.key, outputs, output=capture.text(), seconds=done)
    except BaseException as exc:  # the call's result, as data
        result = _failure(call.key, exc, time.perf_counter() - t0)
        result.output = capture.text() if capture is not None else ""
        return result
    finally:
        for path in placed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


_local = threading.local()


def _scratch() -> Path:
    """This worker thread's scratch root. Its folders are kept from call to call (creating and
    removing folders costs milliseconds on some disks, more than a small call itself); every
    WIPE_EVERY calls it is removed whole, with anything a handler left behind."""
    calls = getattr(_local, "calls", 0)
    root = _worker_dir() / f"eventrunner-scratch-{threading.get_ident()}"
    if calls % WIPE_EVERY == 0:
        shutil.rmtree(root, ignore_errors=True)
        # output_path() remembers folders it made; these are gone now.
        invoke._ready_dirs.difference_update(
            [p for p in list(invoke._ready_dirs) if root in p.parents]
        )
        _local.dirs = set()
        root.mkdir(parents=True)
    _local.calls = calls + 1
    return root


def _bundle_root(digest: str, data: bytes) -> Path:
    """The unpacked bundle; modules of bundles long unused are dropped from sys.modules."""
    root = unpacked(digest, data, _worker_dir() / "eventrunner-bundles")
    with _lock:
        _loaded[digest] = root
        _loaded.move_to_end(digest)
        while len(_loaded) > KEEP_BUNDLES:
            _, old = _loaded.popitem(last=False)
            loader.forget(old)
    return root


def _load(call: WireCall, root: Path) -> Callable[..., Any]:
    """The handler from the bundle, once its code identity is the one the coordinator records."""
    path = root / call.module
    if call.code:
        version = call.stage.version or ""
        key = (call.bundle, call.module, call.function, version)
        found = _identities.get(key)
        if found is None:  # a bundle never changes: its identities are computed once
            found = _identities[key] = combine(
                codeid.code_identity(path, call.function, root), version
            )
        if found != call.code:
            raise CodeChanged(
                f"handler {call.spec}: its code changed since the workspace was loaded "
                f"(the worker got code {found[:12]}, the coordinator records {call.code[:12]}); "
                "nothing ran. A reload (serve) or the next run uses the edited code"
            )
    ref = loader.HandlerRef(call.spec, call.dotted, call.function, path, root, stock=False)
    return loader.load(ref)


def _materialise(
    call: WireCall, scratch: Path, blobs: dict[str, bytes], placed: list[Path]
) -> None:
    """Put every input (and the previous output) at its path under the scratch folder."""
    dirs: set[Path] = _local.dirs
    for blob in call.payload:
        dest = scratch / blob.relpath
        if dest.parent not in dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(dest.parent)
        placed.append(dest)
        if blob.kind == FILE:
            write_file(dest, blob.data)
        elif blob.kind == TREE:
            unpack_tree(blob.data, dest)
        elif blob.kind == LARGE:
            write_file(dest, blobs[blob.ref])
        elif blob.kind == SHARED:
            if call.shared_root is None:
                raise HandlerError(f"{blob.relpath}: sent as a shared path without shared_fs")
            os.symlink(Path(call.shared_root) / blob.relpath, dest)
        else:
            raise HandlerError(f"{blob.relpath}: unknown blob kind {blob.kind!r}")


def _call(call: WireCall, func: Callable[..., Any], root: Path, capture: Capture) -> list[Blob]:
    """The handler's call with `root` as its data root (invoke's path, with async handlers
    run to completion here); its outputs read back as blobs."""
    stage = call.stage
    ctx = invoke.make_context(stage, call.values, call.attempt, root)
    ctx.log.sink = capture
    try:
        kwargs = invoke.build_kwargs(stage, func, call.files, root)
        if inspect.iscoroutinefunction(func):
            result = asyncio.run(_awaited(func, ctx, kwargs, stage.timeout))
        else:
            result = invoke.call_sync(func, ctx if invoke.wants_ctx(func) else None, kwargs)
        written = invoke.store_result(stage, call.values, result, ctx, root)
    except BaseException:
        if ctx.output_path is not None and os.path.lexists(ctx.output_path):
            invoke.Written([(ctx.output_path, ctx.output_path)], {}).discard()
        raise
    try:
        return [
            _blob(tmp, final.relative_to(root).as_posix(), own=tmp == ctx.output_path)
            for tmp, final in written.temps
        ]
    finally:
        written.discard()


async def _awaited(
    func: Callable[..., Any], ctx: Context, kwargs: dict[str, Any], timeout: float | None
) -> Any:
    coro = func(ctx, **kwargs) if invoke.wants_ctx(func) else func(**kwargs)
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise HandlerTimeout(f"timed out after {timeout}s") from None


def _blob(tmp: Path, relpath: str, *, own: bool) -> Blob:
    """An output temp as a blob; a file the handler wrote itself keeps its permission bits."""
    if tmp.is_symlink():
        return Blob(relpath, SYMLINK, os.fsencode(os.readlink(tmp)))
    if tmp.is_dir():
        return Blob(relpath, TREE, pack_tree(tmp))
    mode = os.stat(tmp).st_mode & 0o7777 if own else None
    return Blob(relpath, FILE, read_file(tmp), mode=mode)


def _failure(key: str, exc: BaseException, seconds: float) -> WireResult:
    kind = (
        "permanent"
        if isinstance(exc, PermanentError)
        else "retry"
        if isinstance(exc, RetryLater)
        else ""
    )
    try:
        data: bytes | None = pickle.dumps(exc) if isinstance(exc, Exception) else None
    except Exception:  # unpicklable arguments: the stand-in carries its name and text
        data = None
    return WireResult(
        key,
        error_type=type(exc).__name__,
        error_text=str(exc),
        error_kind=kind,
        error=data,
        retry_after=exc.retry_after if isinstance(exc, RetryLater) else None,
        traceback="".join(traceback.format_exception(exc))[-8000:],
        seconds=seconds,
    )


def _worker_dir() -> Path:
    """The Dask worker's local directory (removed with the worker; a later worker on the
    machine purges one left by a killed worker); a private temp folder outside a worker."""
    try:
        from distributed import get_worker

        return Path(get_worker().local_directory)
    except (ImportError, ValueError):
        return Path(tempfile.gettempdir()) / f"eventrunner-worker-{os.getpid()}"


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # called outside a worker
        return ""


def _log_start(topic: str, key: str) -> None:
    """Tell the coordinator the task started."""
    try:
        from distributed import get_worker

        get_worker().log_event(topic, key)
    except (ImportError, ValueError):
        pass
