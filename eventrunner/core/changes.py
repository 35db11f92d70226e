"""The incremental fan-in input: members added, changed and removed since the previous output.

A handler opts in per fan-in input by annotating it `Changes[T]` instead of `dict[str, T]`.
It then reads only what changed since its previous output (O(changed), not O(members)), and
folds that into the previous output it is given. When eventrunner cannot vouch for the
previous output (first run, output edited or missing, code or params changed, invalidated,
a crash between writing the output and its manifest), the call is a full one: `previous` is
None and `added` holds every member, so one handler body serves both cases.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

# InputFile.delta marks of a call's input files (run/changes_input.py sets and reads them). A
# call is incremental when it has a "previous" entry (the output it starts from); its unmarked
# files are then members unchanged since that output. A call without one is a full call.
ADDED, CHANGED, REMOVED, PREVIOUS = "added", "changed", "removed", "previous"


@dataclass(frozen=True)
class Changes(Generic[T]):
    """One fan-in input of an incremental call, each member keyed by its entity id."""

    added: Mapping[str, T]  # members new since the previous output (every member if full)
    changed: Mapping[str, T]  # members whose content changed: their new content
    removed: tuple[str, ...]  # members gone since the previous output (their ids)
    previous: bytes | None  # the previous output's content; None on a full call
    members: int = 0  # how many members the input has now
    unchanged: Sequence[str] = field(
        default=(), repr=False
    )  # ids of the members kept as they were (listed on first use: there may be many)

    @property
    def full(self) -> bool:
        """True on a full call: no previous output to start from, every member in `added`."""
        return self.previous is None


class LazyIds(Sequence[str]):
    """A tuple of ids made on first use (most incremental handlers never look at them)."""

    def __init__(self, make: Callable[[], tuple[str, ...]]) -> None:
        self._make: Callable[[], tuple[str, ...]] | None = make
        self._ids: tuple[str, ...] = ()

    def _get(self) -> tuple[str, ...]:
        if self._make is not None:
            self._ids, self._make = self._make(), None
        return self._ids

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        return tuple(self._get()) == (tuple(other) if isinstance(other, Sequence) else other)

    def __repr__(self) -> str:
        return repr(self._get())


_inputs: dict[Callable[..., Any], frozenset[str]] = {}


def changes_inputs(func: Callable[..., Any]) -> frozenset[str]:
    """The parameters of a handler annotated `Changes[...]` (read once per function object)."""
    found = _inputs.get(func)
    if found is None:
        try:
            hints = typing.get_type_hints(func)
        except Exception:
            hints = dict(getattr(func, "__annotations__", {}))
        found = frozenset(
            n for n, a in hints.items() if a is Changes or typing.get_origin(a) is Changes
        )
        if len(_inputs) > 4096:  # handlers re-imported many times in a long serve
            _inputs.clear()
        _inputs[func] = found
    return found
