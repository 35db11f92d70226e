"""Handlers of the news example: score feed items by keywords, notify, and digest per source."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from eventrunner import PermanentError

from .discord import post_message

SECRET = "DISCORD_WEBHOOK_URL"
_TAGS = re.compile(r"<[^>]+>")


def score(ctx, item: dict) -> dict:
    """{"score", "matched", "threshold", "notify"} from the keywords found in title and summary."""
    weights = _keywords(ctx.params.get("keywords"))
    threshold = ctx.params.get("threshold", 1)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        raise PermanentError("score: params.threshold must be a number")
    text = _plain(f"{item.get('title', '')} {item.get('summary', '')}").lower()
    matched = sorted(k for k in weights if re.search(r"\b" + re.escape(k.lower()), text))
    total = sum(weights[k] for k in matched)
    return {
        "score": total,
        "matched": matched,
        "threshold": threshold,
        "notify": total >= threshold,
    }


def notify(ctx, item: dict, score: dict) -> dict:
    """Post an item that passed the threshold to the Discord webhook; record what happened.

    An item already posted (an earlier record for the same id) is not posted again when it
    re-runs: a corrected title or a changed handler must not ping the channel twice.
    """
    if not score.get("notify"):
        return {"posted": False, "score": score.get("score", 0)}
    previous = _previous_record(ctx.final_path)
    if previous.get("posted") and previous.get("id") == item.get("id"):
        ctx.log.info("notify: %s was posted before; not posting again", ctx.entity_id)
        return previous
    message = {
        "username": ctx.params.get("username", "eventrunner news"),
        "content": _message(ctx.entity["source"], item, score),
        "allowed_mentions": {"parse": []},  # a feed title must never ping @everyone
    }
    status = post_message(ctx.secret(SECRET), message, float(ctx.params.get("timeout", 30)))
    return {"posted": True, "status": status, "id": item.get("id"), "score": score.get("score")}


def digest(ctx, items: dict[str, dict], scores: dict[str, dict]) -> str:
    """A Markdown digest of one source: its items, highest score first, then newest."""
    source = ctx.entity["source"]
    rows = sorted(items.items())
    rows.sort(key=lambda kv: kv[1].get("published") or "", reverse=True)
    rows.sort(key=lambda kv: scores.get(kv[0], {}).get("score", 0), reverse=True)
    lines = [
        f"# {source} digest",
        "",
        f"{len(rows)} items, best first; ★ passed the threshold.",
        "",
    ]
    for key, item in rows:
        s = scores.get(key, {})
        mark = " ★" if s.get("notify") else ""
        title = _md_escape(_plain(item.get("title") or "(untitled)"))
        when = f" ({item['published'][:10]})" if item.get("published") else ""
        lines.append(f"- [{title}]({item.get('link', '')}) score {s.get('score', 0)}{when}{mark}")
    return "\n".join(lines) + "\n"


def _keywords(raw: Any) -> dict[str, float]:
    """params.keywords as {keyword: weight}: a table of weights, or a list (weight 1 each)."""
    if isinstance(raw, list) and all(isinstance(k, str) for k in raw):
        return dict.fromkeys(raw, 1)
    if isinstance(raw, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in raw.values()
    ):
        return dict(raw)
    raise PermanentError("score: params.keywords must be a list or a table of keyword -> weight")


def _plain(text: str) -> str:
    """Feed text without markup or entities, on one line."""
    return " ".join(html.unescape(_TAGS.sub(" ", text)).split())


def _message(source: str, item: dict, score: dict) -> str:
    title = _plain(item.get("title") or "(untitled)")
    matched = ", ".join(score.get("matched", []))
    return f"**{title}** ({source}, score {score.get('score')}: {matched})\n{item.get('link', '')}"


def _previous_record(path) -> dict:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, AttributeError):
        return {}


def _md_escape(text: str) -> str:
    return re.sub(r"([\[\]\\`*_])", r"\\\1", text)
