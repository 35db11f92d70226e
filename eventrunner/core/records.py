"""The records of a state: its manifest, its failure, and the manual holds and invalidations.

Plain data with their JSON forms (standard library only): the store writes them, the index
holds them, staleness decisions read them.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from eventrunner.core.members import Members
from eventrunner.core.patterns import parse_entity_id

_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_intern = sys.intern


class Manifest:
    """What produced a state: code, params, every input's hash, every output's hash, timings.
    An aggregated input may be recorded by reference (core/members.py: digest, count, log).

    Held for every state in memory (200,000 at 100,000 entities x 2 stages), so stored compactly:
    slots, tuples instead of nested dicts, interned paths and hashes (an output's hash is the
    next stage's input hash), values derived from the entity id. `inputs`, `outputs` and
    `values` are built on access.
    """

    __slots__ = (
        "_io",
        "_members",
        "_names",
        "_nin",
        "attempt",
        "code",
        "dropped",
        "duration_s",
        "entity",
        "finished_ns",
        "params",
        "stage",
        "started",
    )

    def __init__(
        self,
        stage: str,
        entity: str,
        values: Mapping[str, str],
        code: str,
        params: str,
        inputs: Mapping[str, Mapping[str, str]],  # a value may be Members (by reference)
        outputs: Mapping[str, str],
        started: float,
        finished_ns: int,
        duration_s: float,
        attempt: int = 1,
        dropped: list[str] | None = None,
    ) -> None:
        self.stage = _intern(stage)
        self.entity = _intern(entity)  # shared by the states of every stage of this entity
        names = tuple(_intern(n) for n in values)
        self._names = _NAMES.setdefault(names, names)
        self.code = _intern(code)
        self.params = _intern(params)
        # One flat tuple: (name, path, hash) per input file, then (path, hash) per output.
        io = [
            _intern(x)
            for n, files in inputs.items()
            if not isinstance(files, Members)
            for p, h in files.items()
            for x in (n, p, h)
        ]
        self._members: tuple[tuple[str, Members], ...] = tuple(
            (_intern(n), files) for n, files in inputs.items() if isinstance(files, Members)
        )
        self._nin = len(io)
        io.extend(_intern(x) for p, h in outputs.items() for x in (p, h))
        self._io = tuple(io)
        self.started = started
        self.finished_ns = finished_ns
        self.duration_s = duration_s
        self.attempt = attempt
        # Fan-out outputs no longer produced (prune deletes them); almost always the shared ().
        self.dropped: tuple[str, ...] = tuple(dropped) if dropped else ()

    @property
    def values(self) -> dict[str, str]:
        """The entity's variables (from the entity id)."""
        return parse_entity_id(self._names, self.entity)

    @property
    def inputs(self) -> dict[str, Mapping[str, str]]:
        """input name -> {relpath: hash} (an aggregated input recorded by reference is its
        `Members`, read from its log only when iterated)."""
        out: dict[str, Any] = {}
        flat = self._io
        for i in range(0, self._nin, 3):
            out.setdefault(flat[i], {})[flat[i + 1]] = flat[i + 2]
        out.update(self._members)
        return out

    @property
    def members(self) -> dict[str, Members]:
        """The aggregated inputs recorded by reference (none in an older manifest)."""
        return dict(self._members)

    def locate(self, folder: str) -> Manifest:
        """Tell its member tables where their logs are (the manifest's folder)."""
        for _, mem in self._members:
            mem.folder = folder
        return self

    @property
    def output_paths(self) -> tuple[str, ...]:
        """The relpaths of the outputs (no dict built)."""
        return self._io[self._nin :: 2]

    @property
    def outputs(self) -> dict[str, str]:
        """relpath -> hash."""
        flat, n = self._io, self._nin
        return dict(zip(flat[n::2], flat[n + 1 :: 2], strict=True))

    def to_json(self) -> dict[str, Any]:
        """Plain data for the manifest file."""
        inputs = {n: f for n, f in self.inputs.items() if not isinstance(f, Members)}
        data = {
            "stage": self.stage,
            "entity": self.entity,
            "values": self.values,
            "code": self.code,
            "params": self.params,
            "inputs": inputs,
            "outputs": self.outputs,
            "started": self.started,
            "finished_ns": self.finished_ns,
            "duration_s": self.duration_s,
            "attempt": self.attempt,
            "dropped": list(self.dropped),
        }
        if self._members:
            # Format 2: no "inputs" key, so that an earlier version reads the manifest as
            # damaged (stale, a full call) instead of trusting it without its members.
            data["format"] = 2
            data["files"] = data.pop("inputs")  # the map inputs beside the member tables
            data["members"] = {n: mem.to_json() for n, mem in self._members}
        return data

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Positional compact state: pickling the index cache stays fast and small.
        return (
            _manifest_from_state,
            (
                self.stage,
                self.entity,
                self._names,
                self.code,
                self.params,
                self._io,
                self._nin,
                self.started,
                self.finished_ns,
                self.duration_s,
                self.attempt,
                self.dropped,
                tuple((n, mem.state()) for n, mem in self._members),
            ),
        )

    def without_dropped(self) -> Manifest:
        """This manifest once its dropped fan-out outputs are deleted (prune): a new object,
        since the index's saved snapshots share manifests and must never see one change."""
        state = list(self.__reduce__()[1])
        state[-2] = ()
        m = _manifest_from_state(*state)
        m._members = self._members  # the same tables (immutable once committed)
        return m

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __repr__(self) -> str:
        return f"Manifest({self.stage!r}, {self.entity!r}, outputs={self.outputs!r})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest file's data; KeyError/TypeError/ValueError on a damaged file (its
        member tables are located by the reader: `locate`)."""
        two = "format" in data and data["format"] == 2  # a list (damaged) raises below
        inputs: dict[str, Any] = dict(data["files"] if two else data["inputs"])
        for name, ref in (data.get("members") or {}).items():
            inputs[name] = Members.from_json(ref)
        return cls(
            data["stage"],
            data["entity"],
            data["values"],
            data["code"],
            data["params"],
            inputs,
            data["outputs"],
            data["started"],
            data["finished_ns"],
            data["duration_s"],
            data.get("attempt", 1),
            data.get("dropped", []),
        )


def _manifest_from_state(
    stage: str,
    entity: str,
    names: tuple[str, ...],
    code: str,
    params: str,
    io: tuple[str, ...],
    nin: int,
    started: float,
    finished_ns: int,
    duration_s: float,
    attempt: int,
    dropped: tuple[str, ...],
    members: tuple[tuple[str, tuple[Any, ...]], ...] = (),
) -> Manifest:
    """Rebuild a manifest from its compact state (unpickling the index cache)."""
    # Strings shared when the cache was written (interned) come back shared: pickle's memo
    # keeps identity within one file. The entity id is interned again so that the index's
    # pattern instances (which intern theirs) share it too.
    m = Manifest.__new__(Manifest)
    m.stage, m.entity, m.code, m.params = stage, _intern(entity), code, params
    m._names, m._io, m._nin = names, io, nin
    m.started, m.finished_ns, m.duration_s, m.attempt, m.dropped = (
        started,
        finished_ns,
        duration_s,
        attempt,
        dropped,
    )
    m._members = tuple((_intern(n), Members(*st)) for n, st in members)
    return m


@dataclass
class Failure:
    """A failed state: attempts so far, last error, when to retry, dead after max attempts."""

    stage: str
    entity: str
    key: str  # hash of code, params and inputs of the failed attempts: a change starts afresh
    attempts: int
    error: str
    traceback: str
    first_failed: float
    last_failed: float
    next_retry: float | None
    dead: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain data for the failure file."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failure:
        """Parse a failure file's data."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class AttemptOutput:
    """What one attempt of a state printed and logged (bounded, secrets masked). Written only
    when there was some; it belongs to the state's last attempt only while `at` matches that
    attempt's record (a later silent attempt leaves it behind unread instead of deleting it)."""

    stage: str
    entity: str
    attempt: int
    outcome: str  # "succeeded" or "failed"
    at: float  # the success's manifest `started`, or the failure's `last_failed`
    text: str

    def belongs_to(self, manifest: Manifest | None, failure: Failure | None) -> bool:
        """True when this is the output of the state's last attempt (its failure, if it has
        one, else its manifest)."""
        if failure is not None:
            return self.outcome == "failed" and self.at == failure.last_failed
        return manifest is not None and self.outcome == "succeeded" and self.at == manifest.started

    def to_json(self) -> dict[str, Any]:
        """Plain data for the output file."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptOutput:
        """Parse an output file's data; KeyError/TypeError on a damaged file."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass
class Control:
    """Manual holds and invalidations. "*" means every entity of the stage."""

    holds: dict[str, list[str]] = field(default_factory=dict)
    invalidations: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # stage -> {eid|"*": time_ns}

    def held(self, stage: str, eid: str) -> bool:
        """True when the state is on manual hold."""
        h = self.holds.get(stage)
        return bool(h) and ("*" in h or eid in h)  # type: ignore[operator]

    def invalidated_at(self, stage: str, eid: str) -> int:
        """Latest invalidation time (ns) that applies to this state, 0 if none."""
        inv = self.invalidations.get(stage)
        if not inv:
            return 0
        return max(inv.get("*", 0), inv.get(eid, 0))

    def copy(self) -> Control:
        """A deep copy, to change and then hand to `Index.set_control` (which owns the live one)."""
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        """Plain data for control.json."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Control:
        """Parse control.json's data."""
        return cls(holds=data.get("holds", {}), invalidations=data.get("invalidations", {}))
