"""A recorded traceback told from the handler's side: its own frames first (issue 10.5).

A failure's traceback text starts in the engine and the executor (and, from a worker process,
holds the worker's traceback as the text of a chained exception), so the handler's lines come
last among a dozen of eventrunner's. `handler_first` reorders the text: the frames of the
user's handler files (innermost last), the error, then every other frame. Pure text work over
what `traceback.format_exception` writes; which files are the handler's is the caller's to say.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_FRAME = re.compile(r'^(\s*)File "(?P<file>.*)", line (?P<line>\d+), in (?P<func>.*)$')
_MARKS = re.compile(r"^\s*[\^~\s]+$")  # the ^^^^ lines under a code line


@dataclass(frozen=True)
class Frame:
    """One frame of a traceback: where, and its code line (may be empty)."""

    file: str
    line: int
    function: str
    code: str

    def to_json(self) -> dict[str, object]:
        """Plain data for --json and the API."""
        return {"file": self.file, "line": self.line, "function": self.function, "code": self.code}


def parse_frames(text: str) -> tuple[list[Frame], list[str]]:
    """Every frame in the text (all chained parts, in order, each once), and the error lines
    (the last lines after the last frame: `ValueError: ...`)."""
    frames: list[Frame] = []
    seen: set[tuple[str, int, str]] = set()
    tail: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FRAME.match(lines[i])
        if match is None:
            if lines[i].strip():
                tail.append(lines[i])
            i += 1
            continue
        indent = len(match.group(1))
        code: list[str] = []
        i += 1
        while i < len(lines) and _indent(lines[i]) > indent and not _FRAME.match(lines[i]):
            if not _MARKS.match(lines[i]):
                code.append(lines[i].strip())
            i += 1
        key = (match["file"], int(match["line"]), match["func"])
        if key not in seen:
            seen.add(key)
            frames.append(Frame(key[0], key[1], key[2], " ".join(code)))
        tail = []
    return frames, tail


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip()) if line.strip() else 1 << 30


def handler_frames(text: str, is_handler: Callable[[str], bool]) -> list[Frame]:
    """The frames of the handler's own files, innermost last."""
    return [f for f in parse_frames(text)[0] if is_handler(f.file)]


def handler_first(
    text: str,
    is_handler: Callable[[str], bool],
    shown: Callable[[str], str] = str,
    *,
    others: bool = True,
) -> list[str]:
    """The traceback as lines: the handler's frames (innermost last), the error, then the
    remaining frames. Without `others` (a listing): the handler's frames and the error's
    first line only. `shown` turns a file name into what is printed."""
    frames, error = parse_frames(text)
    mine = [f for f in frames if is_handler(f.file)]
    if not others:
        return [line for f in mine for line in _frame_lines(f, shown)] + error[:1]
    if not mine:
        return ["Traceback:", *(x for f in frames for x in _frame_lines(f, shown)), *error]
    out = ["Traceback, the handler's frames first (innermost last):"]
    out += [line for f in mine for line in _frame_lines(f, shown)]
    out += error
    rest = [f for f in frames if not is_handler(f.file)]
    if rest:
        out.append("then eventrunner's and libraries' frames:")
        out += [line for f in rest for line in _frame_lines(f, shown)]
    return out


def _frame_lines(f: Frame, shown: Callable[[str], str]) -> list[str]:
    head = f'  File "{shown(f.file)}", line {f.line}, in {f.function}'
    return [head, f"    {f.code}"] if f.code else [head]
