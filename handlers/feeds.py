"""Stock handler `feeds`: split one RSS 2.0 / Atom feed into one JSON document per item.

The stage fans out (e.g. output "items/{feed}/{item}.json"); each item's key is a short
stable hash of its id (or link), or, with params `id_field`, that entry field made path-safe.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import xxhash

from eventrunner.core.errors import PermanentError
from eventrunner.run.context import Context

from ._common import only_input

WHAT = "feeds"
MAX_ID = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def feeds(ctx: Context, **inputs: Path) -> dict[str, dict[str, Any]]:
    """Item key -> {id, title, link, published, summary[, author]} for every entry of the feed."""
    name, path = only_input(inputs, WHAT)
    if ctx.output_path is not None:
        raise PermanentError(
            f"{WHAT}: the stage must fan out, one file per item (output like items/{{feed}}/{{item}}.json)"
        )
    id_field = ctx.params.get("id_field")
    if id_field is not None and (not isinstance(id_field, str) or not id_field):
        raise PermanentError(f"{WHAT}: params.id_field must be the name of an entry field")
    # Bytes, never a str: feedparser fetches a str that looks like a URL, and bytes let it
    # honour the feed's own encoding declaration.
    parsed = feedparser.parse(path.read_bytes())
    if not parsed.entries and (parsed.bozo or not parsed.version):
        why = parsed.get("bozo_exception") or "no RSS or Atom document found"
        raise PermanentError(f"{WHAT}: input {name} ({path.name}) is not a readable feed: {why}")
    items: dict[str, dict[str, Any]] = {}
    identities: dict[str, str] = {}
    for entry in parsed.entries:
        item = _item(entry)
        # Entries without id or link still need a stable identity: their visible content.
        identity = item["id"] or f"{item['title']}|{item['published']}|{item['summary']}"
        key = _key(entry, identity, id_field)
        if key in items:
            if identities[key] == identity:
                continue  # the same item listed twice: keep the first
            key = f"{key[: MAX_ID - 9]}-{_hash(identity)[:8]}"
        items[key], identities[key] = item, identity
    ctx.log.info("%s: %d item(s) from %s", WHAT, len(items), path.name)
    return items


def _item(entry: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": entry.get("id") or entry.get("link") or "",
        "title": entry.get("title", ""),
        "link": entry.get("link", ""),
        "published": _iso(entry.get("published_parsed") or entry.get("updated_parsed")),
        "summary": entry.get("summary", ""),
    }
    if entry.get("author"):
        item["author"] = entry["author"]
    return item


def _iso(when: time.struct_time | None) -> str | None:
    """feedparser's UTC struct_time as ISO 8601 ("2024-05-01T12:00:00+00:00")."""
    if when is None:
        return None
    return datetime(*when[:6], tzinfo=UTC).isoformat()


def _key(entry: Any, identity: str, id_field: str | None) -> str:
    """A safe path segment: the hash of the item's identity, or the sanitised id_field value."""
    if id_field is None:
        return _hash(identity)
    value = entry.get(id_field)
    if value is None or isinstance(value, dict | list):
        raise PermanentError(
            f"{WHAT}: entry {identity!r:.80} has no text field {id_field!r} (params.id_field)"
        )
    # Letters, digits, '_' and '-' only: no separators, dots (hidden or ".tmp" names) or '~'.
    safe = _UNSAFE.sub("-", str(value)).strip("-")[:MAX_ID].strip("-")
    return safe or _hash(str(value))


def _hash(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8"))
