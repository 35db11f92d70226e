"""What an aggregate's new manifest records of its members: a member table by reference
(core/members.py), made from the changes since the previous manifest (O(changed) from a cert)
or, after a full gather, from a diff against the previous table (O(members), as the gather).
"""

from __future__ import annotations

from collections.abc import Mapping

from eventrunner.core.graph import Stage
from eventrunner.core.members import Members, table_digest
from eventrunner.core.records import Manifest
from eventrunner.state.index import Index
from eventrunner.state.members import stem, usable

Key = tuple[str, str]


class Place:
    """Where one state's member logs go: the manifest's folder and file name."""

    def __init__(self, index: Index, qualname: str, eid: str) -> None:
        path = index.store.manifest_path(qualname, eid)
        self.folder, self.name = str(path.parent), path.name

    def stem(self, name: str) -> str:
        return stem(self.name, name)


def previous(m: Manifest | None, name: str) -> Members | None:
    """The previous manifest's table of an input, when a new line may follow it."""
    prev = m.members.get(name) if m is not None else None
    return prev if prev is not None and usable(prev) else None


def from_changes(
    index: Index,
    stage: Stage,
    eid: str,
    m: Manifest | None,
    pending: Mapping[Key, str | None],
    now: Mapping[Key, object],
    view: Mapping[Key, object],
) -> dict[str, Mapping[str, str]]:
    """The tables of a run whose inputs are the cert's view (`pending`: member -> its hash in
    `m`, for the members where the view differs; `now`: those members' files, absent if gone;
    `view`: every member's file, only read for a snapshot)."""
    place = Place(index, stage.qualname, eid)
    out: dict[str, Mapping[str, str]] = {}
    for inp in stage.inputs:
        if not inp.aggregated:
            continue
        delta: dict[str, str | None] = {}
        olds: dict[str, str | None] = {}
        for (name, path), old in pending.items():
            if name == inp.name:
                f = now.get((name, path))
                delta[path] = None if f is None else str(getattr(f, "hash"))  # noqa: B009
                olds[path] = old
        prev = previous(m, inp.name)
        if prev is not None:
            try:
                out[inp.name] = prev.after(delta, olds, place.stem(inp.name))
                continue
            except ValueError:
                pass  # its log does not check out: a snapshot of what the cert knows
        table = {
            path: str(getattr(f, "hash"))  # noqa: B009
            for (name, path), f in view.items()
            if name == inp.name
        }
        out[inp.name] = _snapshot(place, inp.name, m, table)
    return out


def by_reference(
    index: Index,
    stage: Stage,
    eid: str,
    m: Manifest | None,
    inputs: Mapping[str, Mapping[str, str]],
) -> dict[str, Mapping[str, str]]:
    """A run's manifest inputs with each aggregated input as a member table (a diff against
    the previous one: O(members), paid by a run that gathered every member anyway)."""
    out: dict[str, Mapping[str, str]] = {n: f for n, f in inputs.items()}
    place: Place | None = None
    for inp in stage.inputs:
        if not inp.aggregated or isinstance(inputs.get(inp.name), Members):
            continue
        place = place or Place(index, stage.qualname, eid)
        now = dict(inputs.get(inp.name, {}))
        prev = previous(m, inp.name)
        if prev is not None:
            old = prev.table()
            if not prev.broken:
                delta: dict[str, str | None] = {p: h for p, h in now.items() if old.get(p) != h}
                delta.update({p: None for p in old if p not in now})
                olds = {p: old.get(p) for p in delta}
                try:
                    out[inp.name] = prev.after(delta, olds, place.stem(inp.name))
                    continue
                except ValueError:
                    pass
        out[inp.name] = _snapshot(place, inp.name, m, now)
    return out


def _snapshot(place: Place, name: str, m: Manifest | None, table: dict[str, str]) -> Members:
    prev = m.members.get(name) if m is not None else None
    gen = prev.gen + 1 if prev is not None else 1
    return Members.snapshot(place.stem(name), gen, table, place.folder)


def digest_of(files: Mapping[str, str]) -> str:
    """An aggregated input's member digest (attempt keys: the same from a table or a dict)."""
    return files.digest if isinstance(files, Members) else table_digest(files)
