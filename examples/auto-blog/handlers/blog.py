"""The blog's index page: every post, newest first, titled by the post's own <title>."""

from __future__ import annotations

import html
import re

_TITLE = re.compile(r"<title>(.*?)</title>", re.S | re.I)
_H1 = re.compile(r"<h1>(.*?)</h1>", re.S | re.I)
_TAGS = re.compile(r"<[^>]+>")
_SLOT = re.compile(r"\{(site|count|items)\}")


def index(ctx, posts: dict[str, str]) -> str:
    """An HTML list of posts; `posts` maps each date (the entity id) to the post's HTML."""
    site = html.escape(ctx.params.get("site_title", "Blog"))
    items = [
        f'<li><a href="{date}.html">{date}</a> {post_title(page, date)}</li>'
        for date, page in sorted(posts.items(), reverse=True)
    ]
    values = {"site": site, "count": str(len(items)), "items": "\n".join(items)}
    # One pass, so a "{count}" inside a title stays as written.
    return _SLOT.sub(lambda m: values[m.group(1)], PAGE)


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
