"""The workspace cache: a validated Workspace kept with the stats of every file it was built from.

Validating the definitions costs a process little, but importing what validates them (pydantic,
the pipeline schema) costs a one-change `run` ~0.3 s of CPU. `run` and `serve` therefore keep the
loaded Workspace in `.eventrunner/workspace.cache`, and use it again only while every input of
the load is provably the same: the same eventrunner and Python, workspace folder, EVENTRUNNER_*
variables, flags and CPU count, the same resolved data root, and the same stats (size, mtime,
ctime, inode; or the same absence) of eventrunner.toml, of the pipelines and handlers folders
and every file in them, of the stock handlers and of eventrunner's own workspace and core
modules. The stats are taken before the files are read, so an edit during the load makes the
next load miss; a file changed within the racy window before that (RACY_NS) may change again
unseen within its timestamp tick, so no cache is written then. ctime moves with every change
of content or stats and cannot be set back: a file written and given its old mtime back is
seen too. Anything unreadable is a miss; a miss loads afresh.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

CACHE = "workspace.cache"
VERSION = 1  # bump with any change of what the cache holds
KEEP = 4  # loads kept, one per key: the latest ones
RACY_NS = 50_000_000  # as the stamp's: a stat this recent may still change within its tick

Stat = tuple[int, int, int, int] | None
Key = dict[str, Any]


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _inputs(workspace: Path) -> list[str]:
    """Every path the load reads or looks for: eventrunner.toml, the pipelines and handlers
    folders with each folder and file below them (through symlinked folders too), the stock
    handlers' folder, and the modules of eventrunner that a load runs (a changed validation or
    code identity in a development tree makes a fresh load, as a new version does)."""
    out = [str(workspace / "eventrunner.toml")]
    folders = [workspace / "pipelines", workspace / "handlers"]
    stock = _stock_folder()
    if stock is not None:
        folders.append(stock)
    here = Path(__file__).resolve().parent
    folders += [here, here.parent / "core"]
    seen: set[str] = set()
    for folder in folders:
        out.append(str(folder))
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop, or a folder reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            out.extend(os.path.join(dirpath, d) for d in dirnames)
            out.extend(
                os.path.join(dirpath, f) for f in sorted(filenames) if not f.endswith(".pyc")
            )
    return out


def _stock_folder() -> Path | None:
    from eventrunner.workspace.loader import stock_root

    try:
        return stock_root()
    except Exception:  # not installed: resolving a stock handler fails the same way each time
        return None


def key(workspace: Path, overrides: Mapping[str, Any] | None, env: Mapping[str, str] | None) -> Key:
    """What a load depends on, apart from the stats (see the module docstring)."""
    from eventrunner import __version__

    environ = os.environ if env is None else env
    return {
        "ident": f"{VERSION}:{__version__}:{sys.version}",
        "workspace": str(workspace),
        "env": sorted((k, v) for k, v in environ.items() if k.startswith("EVENTRUNNER_")),
        "overrides": repr(sorted((overrides or {}).items())),
        "cpus": os.cpu_count(),
    }


def stats(workspace: Path) -> list[tuple[str, Stat]]:
    """The stats of every input file and folder of a load, taken before the load reads them."""
    return [(path, _stat(path)) for path in _inputs(workspace)]


def _records(state_dir: Path) -> list[dict[str, Any]]:
    """The cached loads, one per key (`run` and `serve --port N` differ by their flags)."""
    try:
        with open(state_dir / CACHE, "rb") as fh:
            records = pickle.load(fh)
    except Exception:  # missing, torn, or written by another version: load afresh
        return []
    return records if isinstance(records, list) else []


def read(workspace: Path, wanted: Key) -> Workspace | None:
    """The cached Workspace when everything it was loaded from is provably unchanged, else None."""
    record = next((r for r in _records(workspace / ".eventrunner") if r.get("key") == wanted), None)
    if record is None:
        return None
    recorded: list[tuple[str, Stat]] = record["stats"]
    if [path for path, _ in recorded] != _inputs(workspace):
        return None  # a file or folder came or went
    if any(_stat(path) != stat for path, stat in recorded):
        return None
    ws: Workspace = record["workspace"]
    if (workspace / record["data_root"]).resolve() != ws.settings.data_root:
        return None  # a symlink on the way to the data root points elsewhere now
    return ws


def write(ws: Workspace, wanted: Key, before: list[tuple[str, Stat]], data_root: str) -> bool:
    """Keep `ws` (loaded from files whose stats were `before`); False when not kept: no state
    folder yet (a cache never creates it), or a file changed too recently to vouch for."""
    state_dir = ws.settings.state_dir
    if not state_dir.is_dir():
        return False
    now = time.time_ns()
    # ctime, not mtime: set by the kernel at each change (never by the user, never ahead).
    if any(stat is not None and now - stat[2] < RACY_NS for _, stat in before):
        discard(state_dir)
        return False
    from eventrunner.state.files import atomic_write

    record = {"key": wanted, "stats": before, "workspace": ws, "data_root": data_root}
    kept = [r for r in _records(state_dir) if r.get("key") != wanted][-(KEEP - 1) :]
    # A cache: no fsync needed, a lost or torn one means a fresh load. Two writers at once:
    # the last rename wins, and the other's load is a miss next time.
    try:
        data = pickle.dumps([*kept, record], pickle.HIGHEST_PROTOCOL)
        atomic_write(state_dir / CACHE, data, durable=False)
    except Exception:  # best effort (a full disk, a read-only folder): the load stands
        return False
    return True


def discard(state_dir: Path) -> None:
    """Forget the cached workspace."""
    try:
        os.unlink(state_dir / CACHE)
    except FileNotFoundError:
        pass
