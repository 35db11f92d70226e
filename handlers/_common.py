"""Helpers shared by the stock handlers: input paths, params, `{...}` placeholder templates."""

from __future__ import annotations

import json as _json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from eventrunner.core.durations import parse_duration
from eventrunner.core.errors import DurationError, PermanentError
from eventrunner.run.context import Context

# {output}, {input.NAME}, {vars.NAME}, {params.NAME}; any other brace text (awk programs,
# ${HOME}, JSON) is left alone, so templates need no escaping.
PLACEHOLDER = re.compile(r"\{(output|(?:input|vars|params)\.[A-Za-z0-9_-]+)\}")

Value = str | list[str]  # a list is several words (the members of a fan-in input)


def render(
    template: str, values: Mapping[str, Value], quote: Callable[[str], str], what: str
) -> str:
    """Replace every placeholder by its quoted value; PermanentError naming an unknown one."""

    def sub(m: re.Match[str]) -> str:
        value = values.get(m.group(1))
        if value is None:
            known = ", ".join("{" + k + "}" for k in sorted(values)) or "none"
            raise PermanentError(f"{what}: unknown placeholder {m.group(0)} (known: {known})")
        return " ".join(quote(v) for v in value) if isinstance(value, list) else quote(value)

    return PLACEHOLDER.sub(sub, template)


def context_values(ctx: Context) -> dict[str, Value]:
    """Placeholder values every template may use: entity variables and params."""
    values: dict[str, Value] = {f"vars.{k}": v for k, v in ctx.entity.items()}
    values.update((f"params.{k}", param_text(v)) for k, v in ctx.params.items())
    return values


def param_text(value: Any) -> str:
    """A param as template text: strings as they are, other values as JSON (true, 3, [1, 2])."""
    return value if isinstance(value, str) else _json.dumps(value, ensure_ascii=False)


def input_paths(name: str, value: object, what: str) -> list[Path]:
    """The file(s) of one input: a map input gives one path, a fan-in input its members by id."""
    items = [value] if not isinstance(value, dict) else [value[k] for k in sorted(value)]
    if not all(isinstance(p, Path) for p in items):
        # The executor gives Path for `**inputs: Path`; anything else means it no longer does.
        raise PermanentError(f"{what}: input {name} did not arrive as a path (executor mismatch)")
    return list(items)  # type: ignore[arg-type]


def only_input(inputs: Mapping[str, object], what: str) -> tuple[str, Path]:
    """The single, non-fan-in input of a handler that reads exactly one file."""
    if len(inputs) != 1:
        raise PermanentError(f"{what}: the stage must declare exactly one input, not {len(inputs)}")
    name, value = next(iter(inputs.items()))
    if isinstance(value, dict):
        raise PermanentError(f"{what}: input {name} is a fan-in input; give one file per entity")
    return name, input_paths(name, value, what)[0]


def one_output(ctx: Context, what: str) -> None:
    """PermanentError for a fan-out stage: this handler returns one document, not a mapping."""
    if ctx.output_path is None:
        raise PermanentError(
            f"{what}: cannot feed a fan-out stage; its output must be one file per entity"
        )


def flag(ctx: Context, key: str, default: bool, what: str) -> bool:
    """A true/false params entry."""
    value = ctx.params.get(key, default)
    if not isinstance(value, bool):
        raise PermanentError(f"{what}: params.{key} must be true or false, not {value!r}")
    return value


def read_text(name: str, path: Path, what: str) -> str:
    """An input file as UTF-8 text; PermanentError (no retry helps) when it is not."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"{what}: input {name} ({path.name}) is not UTF-8 text: {exc}"
        ) from None


def duration_param(ctx: Context, key: str, default: float | None, what: str) -> float | None:
    """A params entry holding seconds or duration text ("30s"); PermanentError when malformed."""
    raw = ctx.params.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str | int | float):
        raise PermanentError(f'{what}: params.{key} must be seconds or a duration text like "30s"')
    try:
        seconds = parse_duration(raw)
    except DurationError as exc:
        raise PermanentError(f"{what}: params.{key}: {exc}") from None
    if seconds <= 0:
        raise PermanentError(f"{what}: params.{key} must be positive, not {raw!r}")
    return seconds


def str_mapping(ctx: Context, key: str, what: str) -> dict[str, str]:
    """A params table of names to scalar values (env, headers) as strings."""
    raw = ctx.params.get(key, {})
    if not isinstance(raw, dict):
        raise PermanentError(f"{what}: params.{key} must be a table of names to values")
    out: dict[str, str] = {}
    for k, v in raw.items():
        if isinstance(v, dict | list) or v is None:
            raise PermanentError(f"{what}: params.{key}.{k} must be a string, number or boolean")
        out[str(k)] = param_text(v)
    return out
