"""An aggregate's member table: one fan-in input's members (relpath -> hash) recorded by
reference, so that an aggregate's commit costs O(members changed), not O(members) (issue 15).

The manifest records, per aggregated input, an order-independent digest of its members, their
count and where its member log is (a file beside the manifest: a snapshot line, then one line of
changes per commit, and the byte length this manifest covers). The digest is a sum of one hash
per (relpath, hash) modulo 2**128, so a commit updates it from the changed members alone. The
table itself is read from the log only when someone asks for members (a full walk, `explain`),
and checked against the digest and count then; a log that does not check out reads as an empty
table (`broken`), which makes the aggregate stale, never fresh on a wrong record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_MOD = 1 << 128
CHAIN = 256  # deltas kept in memory behind a table before it is materialised again
# The reader of member logs (set by state/members.py: core does no disk I/O itself).
READER: Callable[[Members], dict[str, str]] | None = None


def entry_value(path: str, digest: str) -> int:
    """One member's share of the digest."""
    data = f"{path}\0{digest}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


def table_digest(table: Mapping[str, str]) -> str:
    """The digest of a whole member table (O(members): used for snapshots and checks)."""
    return _hex(sum(entry_value(p, h) for p, h in table.items()))


def _hex(total: int) -> str:
    return f"{total % _MOD:032x}"


class Members(Mapping[str, str]):
    """One aggregated input's members as a manifest records them (see the module docstring).

    Immutable once committed. A new table is `after(changes)` of the previous one: its digest
    and count come from the changes alone, and its entries are materialised only on access.
    """

    __slots__ = (
        "_delta",
        "_parent",
        "_pending",
        "_table",
        "base",
        "broken",
        "count",
        "digest",
        "entries",
        "file",
        "folder",
        "gen",
        "length",
    )

    def __init__(
        self,
        file: str,
        gen: int,
        length: int,
        digest: str,
        count: int,
        entries: int,
        *,
        folder: str = "",
    ) -> None:
        self.file = file  # the log's name, in the manifest's folder
        self.gen = gen  # the log's generation (a snapshot starts a new file)
        self.length = length  # bytes of the log this table covers
        self.digest = digest
        self.count = count
        self.entries = entries  # entries written in the log (snapshot + changes): compaction
        self.folder = folder  # where the log is (in memory only: workspaces get copied)
        self.base = length  # where this table's line is written (set for a new table)
        self.broken = False  # its log did not check out
        self._table: dict[str, str] | None = None
        self._parent: Members | None = None
        self._delta: dict[str, str | None] | None = None  # relpath -> new hash, None: removed
        self._pending: dict[str, str | None] | None = None  # the line a commit appends

    # -- new tables ---------------------------------------------------------------------------
    @classmethod
    def snapshot(cls, file_stem: str, gen: int, table: dict[str, str], folder: str) -> Members:
        """A new log of its own holding the whole table (O(members))."""
        m = cls(f"{file_stem}.{gen}.members", gen, 0, table_digest(table), len(table), len(table))
        m.folder, m.base, m._table = folder, 0, table
        return m

    def after(
        self, delta: dict[str, str | None], olds: dict[str, str | None], file_stem: str
    ) -> Members:
        """This table with `delta` applied (relpath -> new hash, None: removed; `olds`: each
        one's hash here, None: not a member here): O(changed). A snapshot when the log has grown
        to twice the table (compaction: O(members), once per as many changes). ValueError when
        this table turns out broken (the caller writes a snapshot of what it knows)."""
        total = int(self.digest, 16)
        count = self.count
        for path, new in delta.items():
            old = olds.get(path)
            if old is not None:
                total -= entry_value(path, old)
                count -= 1
            if new is not None:
                total += entry_value(path, new)
                count += 1
        entries = self.entries + len(delta)
        if entries > 2 * count + 1024:
            table = dict(self.table())
            if self.broken:
                raise ValueError(f"member log {self.file} does not check out")
            _apply(table, delta)
            return Members.snapshot(file_stem, self.gen + 1, table, self.folder)
        m = Members(self.file, self.gen, self.length, _hex(total), count, entries)
        m.folder, m.base = self.folder, self.length
        m._parent, m._delta = self, dict(delta)
        m._pending = m._delta
        if self._chain() >= CHAIN:
            m.table()  # bound the chain (and the memory it holds)
            if m.broken:
                raise ValueError(f"member log {self.file} does not check out")
        return m

    def pending(self) -> dict[str, str | None] | None:
        """The changes a commit appends to the log (None: this is a snapshot, write it whole)."""
        return None if self.base == 0 else (self._pending or {})

    def written(self, length: int) -> None:
        """The log now holds this table's line: it ends at `length`."""
        self.length, self._pending = length, None

    # -- reading ------------------------------------------------------------------------------
    def _chain(self) -> int:
        n, m = 0, self
        while m._table is None and m._parent is not None:
            n, m = n + 1, m._parent
        return n

    def table(self) -> dict[str, str]:
        """relpath -> hash of every member (materialised once: from the chain or the log)."""
        if self._table is not None:
            return self._table
        chain: list[Members] = []
        m: Members = self
        while m._table is None and m._parent is not None:
            chain.append(m)
            m = m._parent
        if m._table is None:
            m._table = _read(m)
        table = dict(m._table) if chain else m._table
        for node in reversed(chain):
            _apply(table, node._delta or {})
        self.broken = m.broken
        self._table, self._parent, self._delta = table, None, None
        return table

    def __getitem__(self, path: str) -> str:
        return self.table()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table())

    def __len__(self) -> int:
        return self.count

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Members):
            return self.state() == other.state()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def state(self) -> tuple[Any, ...]:
        """Plain, compact state (the index cache; the manifest file's "members" entry)."""
        return (self.file, self.gen, self.length, self.digest, self.count, self.entries)

    def to_json(self) -> dict[str, Any]:
        """The manifest file's record of this table."""
        keys = ("file", "gen", "length", "digest", "count", "entries")
        return dict(zip(keys, self.state(), strict=True))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Members:
        """Parse a manifest's record; KeyError/TypeError/ValueError on damage."""
        m = cls(
            str(data["file"]),
            int(data["gen"]),
            int(data["length"]),
            str(data["digest"]),
            int(data["count"]),
            int(data["entries"]),
        )
        if "/" in m.file or m.file.startswith("."):
            raise ValueError(f"member log name {m.file!r}")
        return m

    def __repr__(self) -> str:
        return f"Members({self.file!r}, count={self.count}, digest={self.digest[:8]})"


def _apply(table: dict[str, str], delta: Mapping[str, str | None]) -> None:
    for path, new in delta.items():
        if new is None:
            table.pop(path, None)
        else:
            table[path] = new


def _read(m: Members) -> dict[str, str]:
    """The table from its log, checked against count and digest; {} (broken) if it fails."""
    if READER is None or not m.folder:
        m.broken = True
        return {}
    try:
        table = READER(m)
    except (OSError, ValueError, TypeError, AttributeError):
        m.broken = True
        return {}
    if len(table) != m.count or table_digest(table) != m.digest:
        m.broken = True
        return {}
    return table
