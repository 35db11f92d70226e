"""The attempt log: which handlers were called and had not returned when the process ended.

`.eventrunner/attempts.log` gets one line before each handler call and one after it returns.
A handler that takes the whole process down (os._exit, a segfault, the OOM killer) never gets
its second line, so the next start can count that attempt as failed (state/recovery.py) and
a poison pill goes `dead` after its attempts instead of killing every restart (SQS's receive
count is the model). Cheap by design: no fsync of its own (a line survives the process dying
at once, the kernel has it; and a machine crash from the next group commit on, whose barrier
syncs this filesystem), and "returned" lines ride along with the next "started" line, so an
execution costs one small append.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from eventrunner.state.files import atomic_write

MAX_BYTES = 1 << 20  # past this the log is rewritten with the calls still open
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class StartedAttempt:
    """A handler call noted in the log and not known to have returned."""

    stage: str
    entity: str
    key: str
    attempt: int
    started: float


# One encoder for every line: json.dumps with options builds one per call (two lines per
# execution, on the event loop); without an indent this one is json's C encoder.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _line(fields: list[str | int | float]) -> bytes:
    return (_encode(fields) + "\n").encode()


class AttemptLog:
    """Appends to one log file; `open_at_last_stop()` reads what a previous process left."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0
        self._open: dict[tuple[str, str], bytes] = {}  # calls under way: their "started" lines
        self._returned: list[bytes] = []  # "returned" lines not written yet

    def started(self, stage: str, eid: str, key: str, attempt: int, started: float) -> None:
        """Note a call before it is made (with the returns noted since): OSError if it cannot be."""
        if self._fd is None:
            self._fd = os.open(self.path, _APPEND_FLAGS, 0o644)
        line = _line([stage, eid, key, attempt, started])
        data = b"".join([*self._returned, line])
        os.write(self._fd, data)
        self._returned.clear()
        self._size += len(data)
        self._open[(stage, eid)] = line

    def returned(self, stage: str, eid: str) -> None:
        """The call returned (or raised): a restart need not count it."""
        if self._open.pop((stage, eid), None) is None:
            return
        self._returned.append(_line([stage, eid]))
        if self._size > MAX_BYTES:
            self._compact()

    def _compact(self) -> None:
        data = b"".join(self._open.values())
        try:
            atomic_write(self.path, data, durable=False)  # durable with the next barrier
        except OSError:
            return  # a long log is still right (every line is checked): compacted next time
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, _APPEND_FLAGS, 0o644)
        self._size, self._returned = len(data), []

    def open_at_last_stop(self) -> list[StartedAttempt]:
        """Calls a previous process started and never saw return (a torn line is skipped)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        found: dict[tuple[str, str], StartedAttempt] = {}
        for line in raw.splitlines():
            try:
                fields = json.loads(line)
                if len(fields) == 2:
                    found.pop((fields[0], fields[1]), None)
                else:
                    stage, eid, key, attempt, started = fields
                    found[(stage, eid)] = StartedAttempt(
                        stage, eid, key, int(attempt), float(started)
                    )
            except (ValueError, TypeError):
                continue
        return list(found.values())

    def clear(self) -> None:
        """Forget every line: the open calls of the last stop are accounted for."""
        self._open.clear()
        self.close()

    def close(self) -> None:
        """Stop writing: the file is removed when no call is under way (a clean stop), else
        kept with the returns noted since the last call (the next start counts the rest)."""
        if self._fd is not None:
            if self._open and self._returned:
                try:
                    os.write(self._fd, b"".join(self._returned))
                except OSError:
                    pass  # those calls count as cut at the next start: the safe side
            os.close(self._fd)
            self._fd = None
        if not self._open:
            self.path.unlink(missing_ok=True)
        self._size, self._returned = 0, []
