"""Path patterns with {variable} segments: parse, match, format, entity ids and scans of a root."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from eventrunner.core.errors import PatternError
from eventrunner.core.names import STATE_DIR as _STATE_DIR
from eventrunner.core.names import TMP_PREFIX
from eventrunner.core.pattern_text import Part, Var, split_pattern

NO_VARS_ID = "_"
_MAX_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEMP_PREFIXES = (TMP_PREFIX, ".#")
_TEMP_SUFFIXES = (".tmp", ".swp", ".swx", "~", ".part", ".crdownload")
_ID_ESCAPE = re.compile(r"%(.{0,2})")
_ID_DECODE = {"25": "%", "2C": ",", "3D": "="}


_Group = tuple[str, str, "re.Pattern[str] | None"]  # (regex group, variable, constraint)


@dataclass(frozen=True)
class _Segment:
    """One compiled pattern segment: a literal name, or a regex binding variables."""

    parts: tuple[Part, ...]
    regex: re.Pattern[str]
    groups: tuple[_Group, ...]
    literal: str | None
    dotted: bool  # the segment starts with "." in the pattern, so hidden names may match

    def bind(self, name: str) -> dict[str, str] | None:
        """Values this segment takes from one path name; None if it does not match or is skipped."""
        if self.literal is not None:
            return {} if name == self.literal else None
        if _skipped(name, self.dotted) or (m := self.regex.fullmatch(name)) is None:
            return None
        found: dict[str, str] = {}
        for group, var, check in self.groups:
            value = m.group(group)
            # Re-check alone: a lookaround in an embedded constraint may see past the value.
            if (check is not None and check.fullmatch(value) is None) or _value_problem(value):
                return None
            found[var] = value
        return found


@dataclass(frozen=True)
class Pattern:
    """A path relative to the data root with {variable} segments; build it with parse_pattern."""

    text: str
    key: str
    variables: tuple[str, ...]
    constraints: Mapping[str, str] = field(hash=False)
    segments: tuple[_Segment, ...] = field(init=False, repr=False, compare=False)
    _checks: Mapping[str, re.Pattern[str]] = field(init=False, repr=False, compare=False)
    # (before, variable, after) when the variable occurs once: join is then one concatenation.
    _affix: tuple[str, str, str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            checks = {name: re.compile(regex) for name, regex in self.constraints.items()}
            segments = tuple(self._segment(parts, checks) for parts in split_pattern(self.key)[0])
        except re.error as e:
            raise PatternError(f"pattern {self.text!r}: bad regex {e.pattern!r}: {e}") from None
        object.__setattr__(self, "constraints", MappingProxyType(dict(self.constraints)))
        object.__setattr__(self, "_checks", MappingProxyType(checks))
        object.__setattr__(self, "segments", segments)
        flat: list[Part] = []
        for i, seg in enumerate(segments):
            flat.extend(["/"] if i else [])
            flat.extend(seg.parts)
        occurrences = [part for part in flat if isinstance(part, Var)]
        affix = None
        if len(occurrences) == 1:
            i = flat.index(occurrences[0])
            text = [p if isinstance(p, str) else "" for p in flat]
            affix = ("".join(text[:i]), occurrences[0].name, "".join(text[i + 1 :]))
        object.__setattr__(self, "_affix", affix)

    def _segment(self, parts: list[Part], checks: Mapping[str, re.Pattern[str]]) -> _Segment:
        """Compile one segment to a regex; a repeated variable becomes a backreference."""
        regex: list[str] = []
        groups: list[_Group] = []
        for part in parts:
            if isinstance(part, str):
                regex.append(re.escape(part))
            elif (group := f"_er{self.variables.index(part.name)}") in {g[0] for g in groups}:
                regex.append(f"(?P={group})")
            else:
                inner = f"(?:{self.constraints[part.name]})" if part.name in checks else "[^/]+?"
                regex.append(f"(?P<{group}>{inner})")
                groups.append((group, part.name, checks.get(part.name)))
        literal = None if groups else _render(parts)
        dotted = isinstance(parts[0], str) and parts[0].startswith(".")
        return _Segment(tuple(parts), re.compile("".join(regex)), tuple(groups), literal, dotted)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle from the public fields; the mapping proxy and regexes are rebuilt."""
        return (Pattern, (self.text, self.key, self.variables, dict(self.constraints)))

    def with_constraints(self, extra: Mapping[str, str]) -> Pattern:
        """This pattern with more constraints; constraints on variables it lacks are ignored."""
        merged = dict(self.constraints)
        for name, regex in extra.items():
            if name in self.variables and merged.setdefault(name, regex) != regex:
                raise PatternError(
                    f"pattern {self.key!r}: variable {name!r} has two constraints, "
                    f"{merged[name]!r} and {regex!r}"
                )
        if merged == self.constraints:
            return self
        seen: set[str] = set()

        def declare(m: re.Match[str]) -> str:  # the constraint goes on the first occurrence
            first, name = m.group(1) not in seen, m.group(1)
            seen.add(name)
            return f"{{{name}:{merged[name]}}}" if first and name in merged else m.group(0)

        text = re.sub(r"\{(\w+)\}", declare, self.key)
        return Pattern(text, self.key, self.variables, merged)

    def match(self, relpath: str) -> dict[str, str] | None:
        """Variable values when relpath ("/"-separated) is a path of this pattern scan would find."""
        names = relpath.split("/")
        if len(names) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for seg, name in zip(self.segments, names, strict=True):
            if (found := seg.bind(name)) is None:
                return None
            for var, value in found.items():
                if values.setdefault(var, value) != value:
                    return None
        return {var: values[var] for var in self.variables}

    def recorded_values(self, relpath: str) -> dict[str, str] | None:
        """match() for a path this pattern matched before (a manifest's member): with one
        variable occurring once, sliced out without re-checking the name (5x faster)."""
        if self._affix is None:
            return self.match(relpath)
        before, var, after = self._affix
        end = len(relpath) - len(after)
        if end > len(before) and relpath.startswith(before) and relpath.endswith(after):
            value = relpath[len(before) : end]
            if "/" not in value:
                return {var: value}
        return None

    def can_name(self, path: Sequence[str]) -> bool:
        """True when a path this pattern matches could be `path` (segments), lie below it or
        hold it: each segment the two have in common can bind that name, consistently."""
        values: dict[str, str] = {}
        for seg, name in zip(self.segments, path, strict=False):
            if (found := seg.bind(name)) is None:
                return False
            for var, value in found.items():
                if values.setdefault(var, value) != value:
                    return False
        return True

    def format(self, values: Mapping[str, str]) -> str:
        """The relpath for these values (extra keys ignored); refuses values that would not read back."""
        where = f"pattern {self.key!r}"
        for name in self.variables:
            if name not in values:
                raise PatternError(f"{where}: missing value for variable {name!r}")
            value, check = values[name], self._checks.get(name)
            problem = _value_problem(value)
            if problem is None and check is not None and check.fullmatch(value) is None:
                # The regex as written (`\d{4}`), not its repr with every backslash doubled.
                problem = f"does not match the pattern {check.pattern}"
            if problem:
                raise PatternError(f"{where}: variable {name!r}: {value!r:.60} {problem}")
        names = []
        for seg in self.segments:
            name = "".join(p if isinstance(p, str) else values[p.name] for p in seg.parts)
            if seg.literal is None and _skipped(name, seg.dotted):
                raise PatternError(f"{where}: {name!r:.60} is a hidden or temporary name")
            if len(name.encode()) > _MAX_BYTES:
                raise PatternError(f"{where}: {name!r:.60} is over {_MAX_BYTES} bytes")
            names.append(name)
        relpath, wanted = "/".join(names), {var: values[var] for var in self.variables}
        if (back := self.match(relpath)) != wanted:
            raise PatternError(f"{where}: ambiguous values, {relpath!r} reads back as {back}")
        return relpath

    def join(self, values: Mapping[str, str]) -> str:
        """The relpath for values already known to be valid (they came from a match): no checks."""
        if self._affix is not None:
            before, name, after = self._affix
            return before + values[name] + after
        return "/".join(
            "".join(p if isinstance(p, str) else values[p.name] for p in seg.parts)
            for seg in self.segments
        )

    @property
    def static_prefix(self) -> str:
        """Folder path before the first segment with a variable: where a scan starts."""
        last = len(self.segments) - 1
        stop = next((i for i, s in enumerate(self.segments) if s.literal is None), last)
        return "/".join(self.key.split("/")[:stop])

    @property
    def is_literal(self) -> bool:
        """True when the pattern has no variables: it names exactly one path."""
        return not self.variables


def parse_pattern(text: str) -> Pattern:
    """Parse pattern text such as "logs/{date:\\d{4}-\\d{2}-\\d{2}}.md"; PatternError says why not."""
    if not text:
        raise PatternError("empty pattern")
    if text.startswith("/"):
        raise PatternError(f"pattern {text!r} is absolute; patterns are relative to the data root")
    try:
        segments, constraints = split_pattern(text)
        for index, parts in enumerate(segments, 1):
            seg = _render(parts)
            if not parts:
                raise PatternError(f"segment {index} is empty ('//' or a trailing '/')")
            if seg in (".", ".."):
                raise PatternError(f"segment {index} is {seg!r}; relative segments are not allowed")
            if seg == _STATE_DIR:
                raise PatternError(f"{_STATE_DIR!r} is reserved for eventrunner's state")
            if _CONTROL.search(seg):
                raise PatternError(f"segment {index} contains a control character")
    except PatternError as e:
        raise PatternError(f"pattern {text!r}: {e}") from None
    variables = tuple(dict.fromkeys(p.name for s in segments for p in s if isinstance(p, Var)))
    return Pattern(text, "/".join(_render(s) for s in segments), variables, constraints)


def check_value(name: str, value: str) -> None:
    """Raise PatternError unless value is a safe single path segment for variable `name`."""
    if problem := _value_problem(value):
        raise PatternError(f"variable {name!r}: {value!r:.60} {problem}")


def entity_id(variables: Sequence[str], values: Mapping[str, str]) -> str:
    """Canonical, reversible text for one entity: "_", "value", or "a=1,b=2" in variable order."""
    if not variables:
        return NO_VARS_ID
    for name in variables:
        if name not in values:
            raise PatternError(f"entity id: missing value for variable {name!r}")
        check_value(name, values[name])
    encoded = {
        name: values[name].replace("%", "%25").replace(",", "%2C").replace("=", "%3D")
        for name in variables
    }
    if len(encoded) == 1:
        return next(iter(encoded.values()))
    return ",".join(f"{name}={value}" for name, value in encoded.items())


def trusted_entity_id(variables: Sequence[str], values: Mapping[str, str]) -> str:
    """entity_id for values already checked (matched from a path): the hot path, no validation."""
    if not variables:
        return NO_VARS_ID
    if len(variables) == 1:
        v = values[variables[0]]
        return (
            v.replace("%", "%25").replace(",", "%2C").replace("=", "%3D")
            if ("%" in v or "," in v or "=" in v)
            else v
        )
    return ",".join(
        f"{n}={values[n].replace('%', '%25').replace(',', '%2C').replace('=', '%3D')}"
        for n in variables
    )


def parse_entity_id(variables: Sequence[str], text: str) -> dict[str, str]:
    """Values of an entity id for these variables (pairs in any order); PatternError if malformed."""
    names = list(dict.fromkeys(variables))
    where = f"entity id {text!r}"
    if not names:
        if text != NO_VARS_ID:
            raise PatternError(f"{where}: expected {NO_VARS_ID!r} for an entity without variables")
        return {}
    if len(names) == 1 and "=" not in text:
        if "," in text:
            raise PatternError(f"{where}: unescaped ',' in a single value")
        return {names[0]: _decode(where, names[0], text)}
    found: dict[str, str] = {}
    for pair in text.split(","):
        name, sep, raw = pair.partition("=")
        if not sep or "=" in raw:
            raise PatternError(f"{where}: {pair!r} is not name=value")
        if name not in names or name in found:
            raise PatternError(f"{where}: unexpected or repeated {name!r} (expected {names})")
        found[name] = _decode(where, name, raw)
    if missing := [name for name in names if name not in found]:
        raise PatternError(f"{where}: missing {missing}")
    return {name: found[name] for name in names}


def is_temp_name(name: str) -> bool:
    """True for eventrunner's own temp files and editor or partial-download files."""
    return (
        name.startswith(_TEMP_PREFIXES)
        or name.endswith(_TEMP_SUFFIXES)
        or (len(name) > 1 and name[0] == "#" and name[-1] == "#")
        or name == "4913"  # vim's probe file for write permission
    )


def _skipped(name: str, dotted: bool) -> bool:
    """True for names a variable segment never matches: the state folder, temp and hidden names."""
    return name == _STATE_DIR or is_temp_name(name) or (name[:1] == "." and not dotted)


def _value_problem(value: str) -> str | None:
    """Why value is not a safe single path segment, or None if it is."""
    if not isinstance(value, str):  # fan-out keys and JSON values arrive untyped
        return "is not a string"
    if not value or value in (".", ".."):
        return "is empty, '.' or '..'"
    if "/" in value or "\\" in value:
        return "contains a path separator ('/' or '\\')"
    if _CONTROL.search(value):
        return "contains a control character"
    try:
        size = len(value) if value.isascii() else len(value.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return f"is {size} bytes in UTF-8, over {_MAX_BYTES}" if size > _MAX_BYTES else None


def _decode(where: str, name: str, raw: str) -> str:
    """Undo the entity-id escapes of one value and check it."""

    def unescape(m: re.Match[str]) -> str:
        if m.group(1) not in _ID_DECODE:
            raise PatternError(f"{where}: bad escape {m.group(0)!r} (only %25, %2C, %3D)")
        return _ID_DECODE[m.group(1)]

    value = _ID_ESCAPE.sub(unescape, raw)
    check_value(name, value)
    return value


def _render(parts: Sequence[Part]) -> str:
    """Segment text with constraints removed."""
    return "".join(p if isinstance(p, str) else f"{{{p.name}}}" for p in parts)
