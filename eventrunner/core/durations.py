"""Duration text ("20ms", "30s", "10m", "1h", "1h30m") to seconds."""

from __future__ import annotations

import re

from eventrunner.core.errors import DurationError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: str | int | float) -> float:
    """Return seconds for a duration text or a bare number of seconds."""
    if isinstance(value, bool):
        raise DurationError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise DurationError(f"duration must not be negative: {value!r}")
        return float(value)
    text = value.strip().replace(" ", "")
    if not text:
        raise DurationError("empty duration")
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise DurationError(f'not a duration: {value!r} (use e.g. "20ms", "30s", "10m", "1h")')
    return total


def format_duration(seconds: float) -> str:
    """Short human form of a duration, e.g. 90 -> "1m30s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


def format_time(epoch: float) -> str:
    """A moment as people read it: local ISO 8601 time to the second, with its UTC offset
    (2026-11-25T10:00:00+01:00), never epoch seconds."""
    from datetime import datetime

    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
