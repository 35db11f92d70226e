"""A map read from the index file on demand, with unsaved changes pinned over a bounded cache.

The index holds its manifests and its stat/hash cache this way (state/index.py): memory holds
what the hot path asked for and what is not saved yet, not every record. Reads go to the
overlay of unsaved changes first (None there: deleted), then the cache, then the file; a map
asked for more keys than its cache keeps reads them all in one scan instead (`warm`). A save
takes a copy of the overlay, writes it in one transaction (maybe in a thread), and then
`settled` unpins what it wrote, unless it changed again meanwhile: until then the overlay
answers, so no reader ever sees the file without a change the index made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
_MISS = object()


class LazyMap(Generic[V]):
    """str -> V over `fetch` (one key from the file, None when absent) and `scan` (every
    (key, value) in the file); the dict read API, plus `[k] = v`, `pop` and `del`."""

    __slots__ = (
        "_cache",
        "_complete",
        "_epoch",
        "_fetch",
        "_keys",
        "_limit",
        "_scan",
        "_unpinned",
        "pending",
    )

    def __init__(
        self,
        fetch: Callable[[str], V | None],
        scan: Callable[[], Iterable[tuple[str, V]]],
        keys: Callable[[], Iterable[str]],
        limit: int = 4096,
    ) -> None:
        self._fetch, self._scan, self._keys, self._limit = fetch, scan, keys, limit
        self.pending: dict[str, V | None] = {}  # changed since the last save (None: deleted)
        self._cache: dict[str, V | None] = {}  # read from the file (None: not there)
        self._complete = False  # the cache holds every row (warm): a key not in it is absent
        self._epoch = 0  # counts cools: a warm in steps begun before one is not adopted
        self._unpinned: set[str] | None = None  # keys settled while a warm in steps reads

    # -- reading ------------------------------------------------------------------------------
    def get(self, key: str, default: V | None = None) -> V | None:
        value = self.pending.get(key, _MISS)
        if value is _MISS:
            value = self._cache.get(key, _MISS)
            if value is _MISS:
                if self._complete:
                    return default
                if len(self._cache) >= self._limit:
                    # More keys asked for than the cache keeps (a fan-in checking every
                    # member): one scan of them all beats a query per key, and they stay
                    # until `cool`.
                    self.warm()
                    return self.get(key, default)
                value = self._fetch(key)
                self._cache[key] = value
        return default if value is None else value  # type: ignore[return-value]

    def __getitem__(self, key: str) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def items(self) -> Iterator[tuple[str, V]]:
        """Every (key, value): the file's rows not changed since the save, then the changes."""
        pending = self.pending
        rows = list(self._cache.items()) if self._complete else self._scan()
        for key, value in rows:
            if key not in pending and value is not None:
                yield key, value
        for key, now in list(pending.items()):
            if now is not None:
                yield key, now

    def keys(self) -> Iterator[str]:
        pending = self.pending
        if self._complete:
            yield from [k for k, v in self._cache.items() if v is not None and k not in pending]
        else:
            for key in self._keys():
                if key not in pending:
                    yield key
        yield from [key for key, now in pending.items() if now is not None]

    __iter__ = keys

    def values(self) -> Iterator[V]:
        return (value for _, value in self.items())

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def __bool__(self) -> bool:
        return any(True for _ in self.keys())

    # -- changing (pinned until saved) ----------------------------------------------------------
    def __setitem__(self, key: str, value: V) -> None:
        self.pending[key] = value
        self._cache.pop(key, None)

    def pop(self, key: str, default: V | None = None) -> V | None:
        value = self.get(key)
        if value is None:
            return default
        self.pending[key] = None
        self._cache.pop(key, None)
        return value

    def __delitem__(self, key: str) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def taken(self) -> dict[str, V | None]:
        """What a save writes: a copy of the changes (the values are never changed in place)."""
        return dict(self.pending)

    def settled(self, written: dict[str, V | None]) -> None:
        """`written` is in the file now: unpin each change not made again since."""
        pending = self.pending
        for key, value in written.items():
            now = pending.get(key, _MISS)
            if now is value or (now is not _MISS and now == value):
                del pending[key]
                if self._unpinned is not None:
                    self._unpinned.add(key)
                if self._complete:
                    self._cache[key] = value  # a warm cache must stay complete

    # -- the cache ------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Every row is in memory (warm): a whole pass over it reads no file."""
        return self._complete

    def warm(self) -> None:
        """Read every row now, in one scan, and keep them until `cool` (a pass that is to ask
        for most keys: one scan instead of a query per key)."""
        self.cool()
        for _ in self.warm_in_steps():
            pass

    def warm_in_steps(self, step: int = 1024) -> Iterator[None]:
        """warm() in steps, yielding after every `step` rows read, so that an event loop can
        serve others between them (a whole scan at 100,000 records holds it for a second).
        The scan's pages may come from different saves: a key a save settled meanwhile is read
        again at the end; a cool meanwhile (a rebuild, a damaged row, a warm() asked for by a
        read between the steps) leaves the map as that made it."""
        epoch, again = self._epoch, set[str]()
        self._unpinned = again
        try:
            rows: list[tuple[str, V]] = []
            for n, row in enumerate(self._scan(), 1):
                rows.append(row)
                if n % step == 0:
                    yield
            if epoch != self._epoch:
                return
            pending = self.pending
            cache: dict[str, V | None] = {k: v for k, v in rows if k not in pending}
            for key in again:
                if key not in pending:
                    cache[key] = self._fetch(key)  # the save's row, not the page's
            self._cache, self._complete = cache, True
        finally:
            if self._unpinned is again:
                self._unpinned = None

    def cool(self) -> None:
        """Back to a bounded cache of what is asked for."""
        self._epoch += 1
        self._complete = False
        self._cache = {}

    forget_cache = cool  # the file changed under us (a rebuild, a damaged row)
