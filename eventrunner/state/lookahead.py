"""A look begun early: the stamp's stats taken by worker processes while `serve` (or `run`)
imports.

`serve` must know what changed while it was down before it is ready, and that look (a stat per
stamped path: 300,000 at 100,000 entities x 2 stages) and its imports were a second each, one
after the other. Started once the watchers are live (so nothing slips between the two), the
stats now run in `statlook.Workers` beside the imports instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eventrunner.core.errors import StorageError
from eventrunner.state import fastpath, statlook

WORKERS_FROM = 1 << 20  # stamp bytes (~16,000 paths) from which worker processes pay off


class PendingLook:
    """`look()` begun now, its path stats taken by `workers` processes (statlook.Workers)
    while the caller does other work, e.g. serve's imports; `result()` gives the look,
    `cancel()` drops it. A stamp under `min_bytes` is looked at in `result()`, in-process:
    starting a worker costs more than its stats."""

    def __init__(
        self, state_dir: Path, workers: int | None = None, min_bytes: int = WORKERS_FROM
    ) -> None:
        self.state_dir = state_dir
        # One per core, two at most: the serve process needs a core for its imports and index.
        workers = workers or min(2, os.cpu_count() or 1)
        self._workers: statlook.Workers | None = None
        self._read: tuple[statlook.Ident | None, dict[str, Any] | None, bool] | None = None
        try:
            size = os.stat(state_dir / fastpath.STAMP).st_size
        except OSError:
            return
        if size >= min_bytes and not os.path.exists(state_dir / "index.dirty"):
            self._workers = statlook.Workers(str(state_dir / fastpath.STAMP), "paths", workers)

    @property
    def in_workers(self) -> bool:
        """True while worker processes are taking the stats."""
        return self._workers is not None

    def _stamp(self) -> tuple[statlook.Ident | None, dict[str, Any] | None, bool]:
        """The stamp as read here (once): its ident, contents (None: unusable), and whether
        its definitions changed (then no path stats are needed)."""
        if self._read is None:
            ident, stamp = fastpath.read_stamp(self.state_dir)
            try:
                changed = stamp is not None and bool(fastpath.differs(stamp["defs"]))
            except fastpath.DAMAGED:
                stamp, changed = None, False
            self._read = (ident, stamp, changed)
        return self._read

    def done(self) -> bool:
        """True when result() will not wait for a worker."""
        return self._workers is None or self._workers.done()

    def maybe_changed(self) -> bool:
        """False once the workers have all found their paths unchanged; True as soon as one
        finds a change, and when no worker can tell (definitions changed, no usable stamp, a
        small look in-process). Waits idle: a no-change answer leaves the workers the cores."""
        if self._workers is None:
            return True
        _, stamp, defs_changed = self._stamp()
        if stamp is None or defs_changed:
            return True
        return self._workers.any_changed()

    def sources_if_unchanged(self) -> dict[str, list[str]] | None:
        """The stamp's source entity ids, which the look will vouch for unless a stamped
        folder changed: the index can be loaded from them while the workers take the stats.
        None: no look will follow this stamp incrementally."""
        _, stamp, defs_changed = self._stamp()
        if self._workers is None or stamp is None or defs_changed:
            return None
        look = fastpath.look_of(stamp, False, [])
        return look.source_ids() if look.incremental else None

    def result(self) -> fastpath.Look | None:
        """The look (None: no usable stamp); StorageError when a worker failed."""
        workers, self._workers = self._workers, None
        if workers is None:
            return fastpath.look(self.state_dir)
        try:
            ident, stamp, defs_changed = self._stamp()
            if stamp is None:
                return None
            if defs_changed:
                return fastpath.look_of(stamp, True, [])
            try:
                read, changed = workers.result()
            except statlook.LookFailed as exc:
                raise StorageError(
                    f"the start-up look at {self.state_dir / fastpath.STAMP} failed ({exc}); "
                    "remove that file to start with a full check instead"
                ) from None
            # Replaced between our read and a worker's: not the stamp they compared.
            return fastpath.look_of(stamp, False, changed) if read == ident else None
        finally:
            workers.cancel()

    def cancel(self) -> None:
        """Stop the workers (if any) and forget the look."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.cancel()
