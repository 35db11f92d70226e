"""Whether two output patterns can name the same path, decided segment by segment.

Two stages writing one file flip each other's state and make `prune` delete a live output, so
validation rejects such a pair. Segments with variables are compared as regular languages with
interegular (an FSM intersection), which handles constraints, lookaheads included.
"""

from __future__ import annotations

import re

from eventrunner.core.patterns import Pattern

_ANY = "[^/]+"  # what an unconstrained variable matches within one segment


def _segment_regex(pattern: Pattern, parts: tuple[object, ...]) -> str:
    """One segment as a regex over its text; a repeated variable is widened to its pattern."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(re.escape(part))
        else:
            name = getattr(part, "name", "")
            out.append(f"(?:{pattern.constraints[name]})" if name in pattern.constraints else _ANY)
    return "".join(out)


def _common_name(a: Pattern, i: int, b: Pattern) -> str | None:
    """A name segment i of both patterns can match (a literal, or b's segment text when both
    have variables), or None when none can exist."""
    sa, sb = a.segments[i], b.segments[i]
    if sa.literal is not None and sb.literal is not None:
        return sa.literal if sa.literal == sb.literal else None
    if sa.literal is not None or sb.literal is not None:
        literal, other = (sa.literal, sb) if sa.literal is not None else (sb.literal, sa)
        assert literal is not None
        return literal if other.bind(literal) is not None else None
    import interegular  # only when two variable segments meet: most workspaces never pay

    try:
        fa = interegular.parse_pattern(_segment_regex(a, sa.parts)).to_fsm()
        fb = interegular.parse_pattern(_segment_regex(b, sb.parts)).to_fsm()
        if fa.intersection(fb).empty():  # type: ignore[no-untyped-call]
            return None
    except Exception:  # a construct interegular cannot read: not provably overlapping
        return None
    # Generating a sample string from the intersection can take exponential time: show the text.
    return "".join(
        p if isinstance(p, str) else "{" + getattr(p, "name", "") + "}" for p in sb.parts
    )


def shared_path(a: Pattern, b: Pattern) -> str | None:
    """A path both patterns match (an example), or None when they cannot name the same path."""
    if len(a.segments) != len(b.segments):
        return None
    names = []
    for i in range(len(a.segments)):
        name = _common_name(a, i, b)
        if name is None:
            return None
        names.append(name)
    return "/".join(names)
