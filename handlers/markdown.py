"""Stock handler `markdown`: render one Markdown input to HTML with markdown-it-py (CommonMark).

params: optional `template` with {content} and {title} (the first heading's text, else the
entity id; HTML-escaped), optional `html = false` to escape raw HTML in the source.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

from eventrunner.core.errors import PermanentError
from eventrunner.run.context import Context

from ._common import flag, one_output, only_input, read_text

WHAT = "markdown"
_SLOTS = re.compile(r"\{(content|title)\}")


def markdown(ctx: Context, **inputs: Path) -> str:
    """The HTML of the input, alone or placed in params.template."""
    name, path = only_input(inputs, WHAT)
    template = ctx.params.get("template")
    if template is not None and not isinstance(template, str):
        raise PermanentError(f"{WHAT}: params.template must be text with {{content}} and {{title}}")
    one_output(ctx, WHAT)
    md = MarkdownIt("commonmark", {"html": flag(ctx, "html", True, WHAT)})
    env: dict[str, object] = {}  # link reference definitions, shared by parse and render
    tokens = md.parse(read_text(name, path, WHAT), env)
    content: str = md.renderer.render(tokens, md.options, env)
    if template is None:
        return content
    title = html.escape(_first_heading(tokens) or ctx.entity_id)
    # One pass, so a {title} written inside the content is not replaced too.
    return _SLOTS.sub(lambda m: content if m.group(1) == "content" else title, template)


def _first_heading(tokens: list[Token]) -> str | None:
    """Plain text of the first heading (markup such as *emphasis* dropped)."""
    for i, tok in enumerate(tokens[:-1]):
        if tok.type == "heading_open":
            inline = tokens[i + 1]
            text = "".join(
                c.content for c in inline.children or () if c.type in ("text", "code_inline")
            )
            return text.strip() or None
    return None
