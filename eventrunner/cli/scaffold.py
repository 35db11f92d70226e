"""`eventrunner init`: a small working workspace to start from."""

from __future__ import annotations

from pathlib import Path

from eventrunner.core.errors import UsageError

FILES = {
    "eventrunner.toml": """\
# Workspace settings; every key is optional.
# data_root = "."            # where data files live (default: this folder)

[server]
host = "127.0.0.1"
port = 8700

[runtime]
debounce = "50ms"
""",
    "pipelines/main.toml": """\
name = "main"

[sources.notes]
pattern = "notes/{slug}.md"

[stages.html]                      # one run per note
handler = "notes:to_html"
inputs  = { note = "notes/{slug}.md" }
output  = "site/notes/{slug}.html"
params  = { title_prefix = "Note: " }

[stages.index]                     # fan-in over every note
handler = "notes:index"
inputs  = { pages = "site/notes/{slug}.html" }
output  = "site/index.html"
""",
    "handlers/notes.py": """\
\"\"\"Workspace handlers: plain functions named "notes:to_html" and "notes:index" in pipelines.\"\"\"

import html


def to_html(ctx, note: str) -> str:
    \"\"\"Wrap a note in a tiny HTML page.\"\"\"
    title = ctx.params["title_prefix"] + ctx.entity["slug"]
    return f"<h1>{html.escape(title)}</h1>\\n<pre>{html.escape(note)}</pre>\\n"


def index(pages: dict[str, str]) -> str:
    \"\"\"Link every page; `pages` is keyed by entity id (the slug).\"\"\"
    items = "".join(f'<li><a href="notes/{s}.html">{s}</a></li>' for s in sorted(pages))
    return f"<ul>{items}</ul>\\n"
""",
    "notes/hello.md": "Hello from eventrunner.\n",
    ".gitignore": ".eventrunner/\n",
}


def scaffold(target: Path) -> list[Path]:
    """Write the template into `target`; refuses to overwrite an existing workspace."""
    if (target / "pipelines").exists() or (target / "eventrunner.toml").exists():
        raise UsageError(f"{target} already holds a workspace")
    written = []
    for rel, text in FILES.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
