"""One input file of a run as its handler's call sees it, how a fan-in member's is made, and the
order of a full walk (shared by the evaluator, the aggregates' certs and the worker)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eventrunner.core.graph import Input
from eventrunner.core.patterns import trusted_entity_id as entity_id


@dataclass(slots=True)
class InputFile:
    """One concrete input file of a run: its input name, member key (fan-in), path and hash."""

    name: str
    member: str | None  # entity id over the aggregated variables, None for a map input
    relpath: str
    hash: str
    # An incremental call's mark (core/changes.py): how this member differs from the previous
    # output's manifest; "removed" and "previous" entries are no input of the call's manifest.
    delta: str = ""


def member_file(inp: Input, values: Mapping[str, str], relpath: str, digest: str) -> InputFile:
    """A fan-in member's file (`values`: its pattern's), member id and hash interned: an
    aggregate's cert keeps 100,000s of them, one string each shared with the index."""
    member = sys.intern(entity_id(inp.aggregated, values))
    return InputFile(inp.name, member, relpath, sys.intern(digest))


def in_walk_order(files: list[InputFile], names: Sequence[str]) -> list[InputFile]:
    """`files` sorted as a full walk gives them: by input (`names`: the stage's input names, in
    order), then member id."""
    rank = {n: i for i, n in enumerate(names)}
    files.sort(key=lambda f: (rank.get(f.name, 0), f.member or f.relpath))
    return files
