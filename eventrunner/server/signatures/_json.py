"""Reading one field of a verified JSON body: senders that put the delivery id in the body."""

from __future__ import annotations

import json
import re
from typing import Any

_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


def parse_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (form posts, text, bad JSON).

    Only called after the signature is verified: nothing is parsed for an unknown sender.
    """
    if not _OBJECT_START.match(body):
        return None  # cheap refusal of what cannot be an object, before a full parse
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def string_field(body: bytes, name: str) -> str | None:
    """A top-level non-empty string field of a JSON object body, or None."""
    obj = parse_object(body)
    value = obj.get(name) if obj is not None else None
    return value if isinstance(value, str) and value else None
