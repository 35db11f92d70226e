"""The podcast script: a daily log's Markdown turned into plain sentences to be read aloud."""

from __future__ import annotations

import re
from datetime import date as Date

_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # [text](url) -> text; images keep their alt text
_MARKS = re.compile(r"(\*\*|__|\*|_|`)")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s+")


def script(ctx, log: str) -> str:
    """Intro, one paragraph per block of the log, outro; plain text for a speech synthesiser."""
    host = ctx.params.get("host", "your host")
    show = ctx.params.get("show", "the daily log")
    day = Date.fromisoformat(ctx.entity["date"])
    spoken_date = f"{day:%A}, {day.day} {day:%B} {day.year}"
    parts = [f"Welcome to {show}. I'm {host}, and this is the log for {spoken_date}."]
    parts += [p for p in (spoken(block) for block in blocks(log)) if p]
    parts.append("That's all for today. Thanks for listening.")
    return "\n\n".join(parts) + "\n"


def blocks(markdown: str) -> list[list[str]]:
    """Paragraphs, headings and list items as separate blocks of lines."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in markdown.splitlines():
        starts_block = _HEADING.match(line) or _BULLET.match(line)
        if not line.strip() or starts_block:
            if current:
                out.append(current)
            current = [line] if line.strip() else []
            if _HEADING.match(line):  # a heading is a block of its own
                out.append(current)
                current = []
        else:
            current.append(line)
    if current:
        out.append(current)
    return out


def spoken(block: list[str]) -> str:
    """One block as a sentence: markup, link targets and bullets removed, final stop added."""
    text = " ".join(_BULLET.sub("", _HEADING.sub("", line)) for line in block)
    text = " ".join(_MARKS.sub("", _LINK.sub(r"\1", text)).split())
    if text and text[-1] not in ".!?:;":
        text += "."
    return text
