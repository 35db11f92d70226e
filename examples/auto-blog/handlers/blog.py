"""The blog's index page: every post, newest first, titled by the post's own <title>; kept up
incrementally (a `Changes` input: only new and changed posts are read)."""

from __future__ import annotations

import html
import re

from eventrunner import Changes, NeedFullCall

_TITLE = re.compile(r"<title>(.*?)</title>", re.S | re.I)
_H1 = re.compile(r"<h1>(.*?)</h1>", re.S | re.I)
_TAGS = re.compile(r"<[^>]+>")
_SLOT = re.compile(r"\{(site|count|items)\}")
_ITEM = re.compile(r'<li><a href="([^"]+)\.html">')


def index(ctx, posts: Changes[str]) -> str:
    """An HTML list of posts, newest first. Incremental: `posts` holds the posts added, changed
    and removed since the previous index (every post on a full call), keyed by date (the entity
    id); each post's line is kept in the page itself, so only those posts are read."""
    site = html.escape(ctx.params.get("site_title", "Blog"))
    lines = {} if posts.previous is None else _items(posts.previous.decode("utf-8"))
    for date in posts.removed:
        lines.pop(date, None)
    for date, page in {**posts.added, **posts.changed}.items():
        lines[date] = f'<li><a href="{date}.html">{date}</a> {post_title(page, date)}</li>'
    items = [lines[date] for date in sorted(lines, reverse=True)]
    values = {"site": site, "count": str(len(items)), "items": "\n".join(items)}
    # One pass, so a "{count}" inside a title stays as written.
    return _SLOT.sub(lambda m: values[m.group(1)], PAGE)


def _items(page: str) -> dict[str, str]:
    """The list items of a previous index, by date; one that is not laid out as PAGE is
    rebuilt from every post instead."""
    start, end = page.find("\n<ul>\n"), page.rfind("\n</ul>\n")
    if start < 0 or end < start:
        raise NeedFullCall()
    out: dict[str, str] = {}
    for line in page[start + len("\n<ul>\n") : end].splitlines():
        m = _ITEM.match(line)
        if m is None:
            raise NeedFullCall()
        out[m.group(1)] = line
    return out


def post_title(page: str, default: str) -> str:
    """The post's title as HTML text (already escaped by the page): <title>, else <h1>."""
    m = _TITLE.search(page) or _H1.search(page)
    text = " ".join(_TAGS.sub("", m.group(1)).split()) if m else ""
    return text or html.escape(default)


PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{site}</title>
<style>body { max-width: 40em; margin: 2em auto; font: 18px/1.5 Georgia, serif; }</style></head>
<body>
<h1>{site}</h1>
<p>{count} days.</p>
<ul>
{items}
</ul>
</body>
</html>
"""
