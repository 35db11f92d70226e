"""Readers for the deploy/ files (Dockerfile, .dockerignore, systemd units) used by test_deploy.

Each is small and follows the real syntax as far as these files use it, so the tests check
the files as their tools will read them, not a hand-copied summary of them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from eventrunner.core.durations import parse_duration

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
GRACE_DEFAULT = 30.0  # RuntimeSettings.shutdown_grace


def tool(name: str) -> str | None:
    """An executable from this venv's bin folder (pip-installed validators) or from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    return shutil.which(name)


def seconds(text: str) -> float:
    """A duration as eventrunner, compose and systemd write it: "45", "45s", "1m30s"."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    text = text.replace("min", "m").replace("sec", "s")
    return parse_duration(text)


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Every ENV key=value of the last stage (the image that runs)."""
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    env: dict[str, str] = {}
    for word, args in instructions[last_from:]:
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT (or a HEALTHCHECK's CMD)."""
    start = args.index("[")
    value = json.loads(args[start:])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def last(instructions: list[tuple[str, str]], word: str) -> str:
    """The arguments of the last `word` instruction (the one in force)."""
    found = [args for w, args in instructions if w == word]
    assert found, f"the Dockerfile has no {word}"
    return found[-1]


# -- .dockerignore ---------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over a relative path."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, in order; the last rule that matches decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _ignore_regex(line.removeprefix("!"))))
    return rules


def dockerignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out `rel`: a rule matches a path or any parent of it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


# -- systemd units ---------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; an empty assignment resets a list, as systemd does."""
    out: dict[str, dict[str, list[str]]] = defaultdict(dict)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values = out[section].setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
            values.append("")
    return dict(out)


def unit_environment(settings: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """The Environment= assignments of a unit's [Service] section."""
    env: dict[str, str] = {}
    for line in settings["Service"].get("Environment", []):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    import yaml

    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]
