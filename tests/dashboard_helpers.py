"""Shared by the dashboard tests: a workspace with fresh, failing, dead and hostile-named
entities, and an HTML reader that collects what the security tests look at."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from serve_helpers import CHAIN_PIPELINE, FAST_RUNTIME, LOG_HELPER, make_workspace

# An entity id as a file drop or webhook may bring it: markup and both quote characters.
HOSTILE = '<script>alert("x\'y")<'

# upper: text with "boom" fails (and is retried), "fatal" fails for good (dead); a file
# `release` must exist before text with "wait" finishes (so a test can watch it running).
HANDLERS = (
    LOG_HELPER
    + """
import time
from pathlib import Path

from eventrunner import PermanentError

WS = Path(__file__).resolve().parent.parent


def upper(ctx, text: str) -> str:
    _log("upper", ctx, text)
    if "fatal" in text:
        raise PermanentError(f"fatal input in {ctx.entity_id}: code 4711")
    if "boom" in text:
        raise ValueError(f"boom in {ctx.entity_id!r}")
    if "wait" in text:
        deadline = time.monotonic() + 30
        while not (WS / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return text.upper()


def count(ctx, text: str) -> str:
    _log("count", ctx, text)
    return f"{len(text.split())} words\\n"
"""
)


def dashboard_workspace(root: Path, *, n: int = 3, extra: dict[str, str] | None = None) -> Path:
    """inbox/e000.. (fresh after a run), one failing, one dead, one with a hostile id."""
    files = {
        "eventrunner.toml": FAST_RUNTIME + 'retry = { backoff = "1d", max_backoff = "1d" }\n',
        "pipelines/p.toml": CHAIN_PIPELINE,
        "handlers/h.py": HANDLERS,
        **{f"inbox/e{i:03d}.txt": f"hello number {i}\n" for i in range(n)},
        "inbox/flaky.txt": "this goes boom\n",
        "inbox/gone.txt": "fatal content\n",
        f"inbox/{HOSTILE}.txt": "boom with a hostile name\n",
        **(extra or {}),
    }
    return make_workspace(root, files)


class Page(HTMLParser):
    """Every tag with its attributes, and inline script/style text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script" and "src" not in dict(attrs)
        if tag == "style":
            self.inline_scripts.append("<style>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def urls(self) -> list[str]:
        """Every URL the page loads or links to (src, href, action, hx-get, hx-post)."""
        out = []
        for _, attrs in self.tags:
            for name in ("src", "href", "action", "hx-get", "hx-post"):
                value = attrs.get(name)
                if value is not None:
                    out.append(value)
        return out

    def attr_names(self) -> set[str]:
        return {name for _, attrs in self.tags for name in attrs}

    def hidden(self, name: str) -> str | None:
        """The value of the first hidden input called `name`."""
        for tag, attrs in self.tags:
            if tag == "input" and attrs.get("name") == name:
                return attrs.get("value")
        return None


def entity_links(html: str) -> list[str]:
    """Entity ids linked from a listing, in page order (URL-decoded)."""
    from urllib.parse import unquote

    return [unquote(m) for m in re.findall(r'class="eid" href="/entities/([^"?]+)', html)]
