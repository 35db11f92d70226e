"""The no-change fast path of `run`: answer "nothing to do" from stats alone, like make does.

After a full evaluation that found nothing to run, `run` records in `.eventrunner/stamp.bin`
the stat identity (size, mtime_ns, inode) of every file the evaluation read, of every folder a
source scan walks (a file added or removed changes its folder's mtime), of every definition
file (eventrunner.toml, pipelines, handler modules) and of the index cache (every change of
state rewrites it). A later `run` whose stats all still match would evaluate to the same
answer, so it is given without importing the engine. Anything else takes the full path.
This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import marshal
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventrunner.state import packed, statlook
from eventrunner.state.statlook import ABSENT

STAMP = "stamp.bin"
PREVIOUS = "stamp.prev"  # a stamp set aside while its paths are still to be carried forward
# Bump with any change of the stamp format (11: data paths relative to the stamp's root).
VERSION = 11
DAMAGED = (KeyError, ValueError, TypeError)  # a stamp whose stats do not fit its paths: none
RACY_NS = 50_000_000  # stats this recent may still change within their mtime tick


def _ident() -> str:
    from eventrunner import __version__

    return f"{VERSION}:{__version__}:{sys.version}"


def _env() -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in os.environ.items() if k.startswith("EVENTRUNNER_"))


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def read_stamp(state_dir: Path) -> tuple[statlook.Ident | None, dict[str, Any] | None]:
    """The stamp file's ident and its contents when usable (None: no usable stamp)."""
    try:
        with open(state_dir / STAMP, "rb") as fh:
            ident = statlook.file_ident(fh.fileno())
            stamp = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None, None
    if not isinstance(stamp, dict) or stamp.get("ident") != _ident() or stamp.get("env") != _env():
        return ident, None
    if stamp.get("at") != os.path.abspath(state_dir):
        return ident, None  # a copied workspace: its stamp holds the paths of the original's files
    if os.path.exists(state_dir / "index.dirty") or time.time() >= stamp.get("not_after", 0):
        return ident, None
    return ident, stamp


def differs(paths: tuple[str, bytes], root: str = "") -> list[str]:
    """The paths whose stats are not the recorded ones (gone ones too), in recorded order:
    absolute (`root`: the one the stamp's relative paths are below)."""
    return statlook.changed_in(*paths, root=root)


@dataclass
class Look:
    """What changed since the stamp: the definitions (bool), the stats of `changed` paths."""

    result: dict[str, Any]
    defs_changed: bool
    changed: list[str]
    packed_sources: str
    packed_paths: tuple[str, bytes]
    packed_source_ids: dict[str, str]  # source pattern key -> its entity ids, NUL-joined
    root: str = ""  # what packed_paths' relative names are below ("/abs/data/")

    @property
    def files_came_or_went(self) -> bool:
        """True when a stamped folder changed or a stamped file is gone: only then can the set
        of source files differ from the stamp's (each folder a source scan walks is stamped)."""
        return any(not os.path.isfile(path) for path in self.changed)

    def source_ids(self) -> dict[str, list[str]]:
        """Entity ids of every source pattern at the stamp (valid as the sources of now only
        when not files_came_or_went)."""
        return {key: ids.split("\0") if ids else [] for key, ids in self.packed_source_ids.items()}

    @property
    def sources(self) -> set[str]:
        """Relpaths of the source files at the stamp (built on demand: 100,000s of strings)."""
        return set(filter(None, self.packed_sources.split("\0")))

    def stamped(self) -> set[str]:
        """Every recorded path as the stamp names it (relative to `root` when below it)."""
        names = self.packed_paths[0]
        return set(names.split("\0")) if names else set()

    def listed(self, paths: Iterable[str]) -> set[str]:
        """Which of these absolute paths the stamp records (a search each for a few)."""
        named = {p: packed.rel(self.root, p) for p in paths}
        where = packed.positions(self.packed_paths[0], named.values())
        return {p for p, name in named.items() if name in where}

    def count_in(self, folder: str) -> int | None:
        """How many recorded paths are directly in `folder` (counted in C, no list of every
        path); None when some are deeper below it, which a listing of it would not show."""
        lead = packed.rel(self.root, os.path.join(folder, ""))
        names = self.packed_paths[0]
        n = names.count("\0" + lead)
        if names.startswith(lead):  # the first name has no NUL before it
            n += 1
            end = names.find("\0")
            if "/" in names[len(lead) : end if end >= 0 else len(names)]:
                return None
        # A literal head keeps the search in C's fast scan (an alternation there is 6x slower).
        if n and re.search(re.escape("\0" + lead) + "[^\0/]*/", names):
            return None
        return n

    @property
    def unchanged(self) -> bool:
        """Nothing at all changed: the recorded result stands."""
        return not self.defs_changed and not self.changed

    @property
    def incremental(self) -> bool:
        """Only data changed since a state where everything was fresh: follow the changes only."""
        return not self.defs_changed and not self.result.get("skipped")


def look(state_dir: Path) -> Look | None:
    """Compare the stamp with the disk; None when there is no usable stamp."""
    stamp = read_stamp(state_dir)[1]
    if stamp is None:
        return None
    try:
        defs_changed = bool(differs(stamp["defs"]))
        changed = [] if defs_changed else differs(stamp["paths"], stamp.get("root", ""))
        return look_of(stamp, defs_changed, changed)
    except DAMAGED:
        return None


def look_of(stamp: dict[str, Any], defs_changed: bool, changed: list[str]) -> Look:
    """The Look of a loaded stamp, given what its stats showed."""
    paths, ids = stamp["paths"], stamp.get("source_ids", {})
    root = stamp.get("root", "")
    return Look(stamp["result"], defs_changed, changed, stamp["sources"], paths, ids, root)


class _MovedMidRun(Exception):
    """A path changed after the evaluation hashed it: no stamp may vouch for that evaluation."""


def _vouch_stat(
    path: str, now: int, exempt: set[str], expected: dict[str, tuple[int, int, int]] | None
) -> tuple[int, int, int] | None:
    """The stats a stamp records for one data path: None when it is gone (left out), mtime -1
    when too recent to vouch for; _MovedMidRun when it changed after the evaluation hashed it."""
    ident = _stat(path)
    if ident is None:
        return None  # a file gone since (an orphan's old input) played no part in the answer
    if now - ident[1] < RACY_NS and path not in exempt:
        # Too recent to vouch for: recorded with a stat that never matches, so the next run
        # re-checks this one file (incrementally) instead of everything.
        return (ident[0], -1, ident[2])
    if expected is not None and path not in exempt and expected.get(path, ident) != ident:
        # Changed after the evaluation hashed it (mid-run): recording its new stats would hide
        # that change from the next run.
        raise _MovedMidRun(path)
    return ident


def _defs(
    defs: Iterable[str], now: int, exempt: set[str], absent_ok: set[str]
) -> list[tuple[str, tuple[int, int, int]]] | None:
    """Stats of the definition files; None when one is missing (unless `absent_ok`: recorded
    as ABSENT, so that creating it is a change) or too recent to vouch for (unless `exempt`:
    only ever replaced by rename)."""
    out = []
    for path in defs:
        ident = _stat(path)
        if ident is None and path in absent_ok:
            ident = ABSENT
        elif ident is None or (now - ident[1] < RACY_NS and path not in exempt):
            return None
        out.append((path, ident))
    return out


def _save(state_dir: Path, data: dict[str, Any]) -> None:
    from eventrunner.state.files import atomic_write  # here: look() stays cheap to import

    # A cache: no fsync needed, a lost stamp means a full run.
    atomic_write(
        state_dir / STAMP,
        marshal.dumps({"ident": _ident(), "env": _env(), "at": os.path.abspath(state_dir), **data}),
        durable=False,
    )


def write(
    state_dir: Path,
    defs: Iterable[str],
    restat: Iterable[str],
    sources: str,
    source_ids: dict[str, str],
    not_after: float,
    result: dict[str, Any],
    replaced: Iterable[str] = (),
    expected: dict[str, tuple[int, int, int]] | None = None,
    base: tuple[str, bytes] = ("", b""),
    root: str = "",
) -> bool:
    """Record the stats of `defs` and of the `restat` paths on top of `base`: the paths and
    stats of the stamp an incremental run started from, which its look found unchanged (empty:
    a full evaluation). Those paths keep their stats unread; the others are added, updated, or
    left out when gone: O(changed) apart from copying the packed arrays.

    Refused (False) when a definition is missing or too recent, or a path changed after the
    evaluation hashed it (`expected`). `defs` changing means a full evaluation (definitions,
    the index cache that every state change rewrites); paths changing, an incremental one.
    `replaced`: files only ever replaced whole by rename (a new inode each time), which the
    racy window does not concern. `sources`, `source_ids`: already packed (pack_sources).
    The workspace's eventrunner.toml may be missing: its absence is recorded. Data paths
    below `root` ("/abs/data/", the base's too) are recorded relative to it."""
    now = time.time_ns()
    exempt = set(replaced)
    recorded_defs = _defs(defs, now, exempt, {settings_file(state_dir.parent)})
    if recorded_defs is None:
        discard(state_dir)
        return False
    restat = list(dict.fromkeys(restat))
    try:
        fresh = [(path, _vouch_stat(path, now, exempt, expected)) for path in restat]
    except _MovedMidRun:
        discard(state_dir)
        return False
    names, stats = packed.patched(base, [(packed.rel(root, path), ident) for path, ident in fresh])
    _save(
        state_dir,
        {
            "defs": packed.pack(recorded_defs),
            "root": root,
            "paths": (names, stats.tobytes()),
            "sources": sources,
            "source_ids": source_ids,
            "not_after": not_after,
            "result": result,
        },
    )
    return True


def pack_sources(
    sources: Iterable[str], source_ids: dict[str, Iterable[str]]
) -> tuple[str, dict[str, str]]:
    """The source relpaths and each pattern's entity ids as a stamp records them."""
    return "\0".join(sorted(sources)), {key: "\0".join(ids) for key, ids in source_ids.items()}


def set_aside(state_dir: Path) -> None:
    """Take the stamp out of use (state may change from now on) but keep it for `previous`:
    a long-running holder need not keep 100,000s of paths in memory to carry them forward."""
    try:
        os.replace(state_dir / STAMP, state_dir / PREVIOUS)
    except FileNotFoundError:
        pass


def previous(state_dir: Path) -> Look | None:
    """The stamp `set_aside` kept, as a look that found nothing changed (what a session's
    stamp carries forward); None when it is gone or unreadable."""
    try:
        with open(state_dir / PREVIOUS, "rb") as fh:
            stamp = marshal.load(fh)
        return Look(
            stamp["result"],
            False,
            [],
            stamp["sources"],
            stamp["paths"],
            stamp.get("source_ids", {}),
            stamp.get("root", ""),
        )
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError):
        return None


def discard(state_dir: Path) -> None:
    """Forget the stamp (anything about the workspace changed), and any set aside."""
    for name in (STAMP, PREVIOUS):
        try:
            os.unlink(state_dir / name)
        except FileNotFoundError:
            pass


def scan_dirs(root: str, prefix: str, depth: int) -> list[str]:
    """Every folder a source scan could find files in: from `prefix` down `depth` levels."""
    start = os.path.join(root, prefix) if prefix else root
    if not os.path.isdir(start):
        # Not there yet: creating it will change the nearest folder above it that exists.
        above = os.path.dirname(start)
        while len(above) > len(root) and not os.path.isdir(above):
            above = os.path.dirname(above)
        return [above] if os.path.isdir(above) else []
    out: list[str] = []
    level = [start]
    for remaining in range(depth, -1, -1):
        nxt: list[str] = []
        for d in level:
            if not os.path.isdir(d):
                continue
            out.append(d)
            if not remaining:
                continue  # the last level: its subfolders are not walked (100,000s of entries)
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if (
                            e.name != ".eventrunner"
                            and not e.name.startswith(".")
                            and e.is_dir(follow_symlinks=False)
                        ):
                            nxt.append(e.path)
            except OSError:
                continue
        level = nxt
    return out


def settings_file(workspace: Path) -> str:
    """eventrunner.toml of a workspace: optional, so a stamp records its absence too."""
    return str(workspace / "eventrunner.toml")


def definition_files(workspace: Path) -> list[str]:
    """eventrunner.toml, the pipelines folder and its files, every handler module and folder."""
    out = [settings_file(workspace)]  # also when missing: creating it is a change
    for folder in (workspace / "pipelines", workspace / "handlers"):
        if folder.is_dir():
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
                out.append(dirpath)
                out.extend(
                    os.path.join(dirpath, f)
                    for f in filenames
                    if f.endswith((".py", ".toml", ".json"))
                )
    return out
