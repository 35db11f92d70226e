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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
    unchanged: tuple[str, ...] = field(
        default=(), repr=False
    )  # ids of the members kept as they were

    @property
    def full(self) -> bool:
        """True on a full call: no previous output to start from, every member in `added`."""
        return self.previous is None


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
