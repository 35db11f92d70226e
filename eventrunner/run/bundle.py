"""Code bundles: a handlers folder as one hashed tar, and folders packed to bytes and back.

The Dask executor sends each worker the handler code the coordinator loaded, as a bundle: the
folder's files in a deterministic tar (sorted, no times or owners), named by the hash of those
bytes. A worker unpacks a bundle once into a cache folder named by that hash and loads
handlers from there, so an edit on the coordinator is a new bundle, never a change under a
running worker (the cache lives in the Dask worker's own local directory, which Dask
removes with the worker). Output and input folders travel as tars too (`pack_tree` / `unpack_tree`).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from eventrunner.state.hashing import hash_bytes

SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".ruff_cache"})


@dataclass(frozen=True, slots=True)
class Bundle:
    """A handlers folder as bytes, and the hash that names it."""

    digest: str
    data: bytes
    files: int


def build_bundle(root: Path) -> Bundle:
    """The files under `root` (no caches, no compiled files) as a deterministic tar."""
    paths: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in names:
            if not name.endswith((".pyc", ".pyo")):
                full = Path(folder, name)
                paths.append((full.relative_to(root).as_posix(), full))
    data = _tar(sorted(paths), dereference=True)
    return Bundle(hash_bytes(data), data, len(paths))


def pack_tree(path: Path) -> bytes:
    """A folder's entries (files, folders, symlinks as links) as tar bytes."""
    entries: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted([*dirs, *names]):
            full = Path(folder, name)
            entries.append((full.relative_to(path).as_posix(), full))
    return _tar(entries, dereference=False)


def unpack_tree(data: bytes, dest: Path) -> None:
    """Recreate a folder packed by `pack_tree` (or a bundle) at `dest`, which must not exist."""
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        if hasattr(tarfile, "tar_filter"):  # 3.11.4+: refuse members leaving `dest`
            tar.extractall(dest, filter="tar")
        else:  # pragma: no cover - older 3.11 releases
            tar.extractall(dest)


def _tar(entries: list[tuple[str, Path]], *, dereference: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for arcname, full in entries:
            info = tar.gettarinfo(str(full), arcname)
            if dereference and info.issym():
                info = tar.gettarinfo(str(full.resolve()), arcname)
            # No time, owner or device: equal content gives equal bytes (and an old mtime,
            # so the code-identity cache never takes an unpacked file for a fresh edit).
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.pax_headers = {}
            if info.isreg():
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


_unpacked: dict[str, Path] = {}
_lock = threading.Lock()


def unpacked(digest: str, data: bytes, cache: Path) -> Path:
    """The folder holding bundle `digest` under `cache`, unpacked on first use (atomically,
    by rename, so processes sharing `cache` never see half a bundle)."""
    found = _unpacked.get(digest)
    if found is not None:
        return found
    with _lock:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = cache / digest
        if not final.is_dir():
            if hash_bytes(data) != digest:
                raise ValueError(f"bundle {digest} arrived damaged")
            tmp = final.with_name(f".{digest}-{os.getpid()}-{threading.get_ident()}")
            shutil.rmtree(tmp, ignore_errors=True)
            unpack_tree(data, tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # another worker process unpacked it first
                shutil.rmtree(tmp, ignore_errors=True)
        _unpacked[digest] = final
        return final
