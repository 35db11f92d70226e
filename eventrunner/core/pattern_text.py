"""The text of a path pattern split into segments of literal text and `{name[:REGEX]}` variables."""

from __future__ import annotations

from typing import NamedTuple

from eventrunner.core.errors import PatternError


class Var(NamedTuple):
    """A `{name}` occurrence inside a pattern segment."""

    name: str


Part = str | Var


def split_pattern(text: str) -> tuple[list[list[Part]], dict[str, str]]:
    """Split pattern text into segments of literal text and variables, plus declared constraints."""
    segments: list[list[Part]] = [[]]
    constraints: dict[str, str] = {}
    i, literal = 0, ""
    while i < len(text):
        char = text[i]
        if char in "{/" and literal:
            segments[-1].append(literal)
            literal = ""
        if char == "{":
            name, regex, i = read_variable(text, i)
            if regex is not None and constraints.setdefault(name, regex) != regex:
                raise PatternError(f"variable {name!r} has two different constraints")
            segments[-1].append(Var(name))
            continue
        if char == "}":
            raise PatternError(f"unbalanced '}}' at position {i}")
        if char == "\\":
            raise PatternError("backslashes are only allowed inside a {name:REGEX} constraint")
        if char == "/":
            segments.append([])
        else:
            literal += char
        i += 1
    if literal:
        segments[-1].append(literal)
    return segments, constraints


def read_variable(text: str, start: int) -> tuple[str, str | None, int]:
    """Read `{name}` or `{name:REGEX}` (braces balanced) at start: name, regex, index past it."""
    i = start + 1
    while i < len(text) and text[i] not in ":}":
        i += 1
    name = text[start + 1 : i]
    if i == len(text):
        raise PatternError(f"unbalanced '{{' at position {start}")
    if not name:
        raise PatternError(f"empty variable name at position {start}")
    if not name.isidentifier():
        raise PatternError(f"variable name {name!r} at position {start} is not an identifier")
    if text[i] == "}":
        return name, None, i + 1
    j, depth = i + 1, 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == "[":  # braces inside a character class are literal
            j = class_end(text, j)
            continue
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            if j == i + 1:
                raise PatternError(f"empty constraint for variable {name!r}")
            return name, text[i + 1 : j], j + 1
        j += 1
    raise PatternError(f"unbalanced '{{' at position {start}")


def class_end(text: str, start: int) -> int:
    """Index just past the regex character class opening at start (or past the end of text)."""
    j = start + 1
    j += text.startswith("^", j)
    j += text.startswith("]", j)  # a "]" first in a class is literal
    while j < len(text) and text[j] != "]":
        j += 2 if text[j] == "\\" else 1
    return j + 1
