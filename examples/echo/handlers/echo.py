"""Handlers of the echo example: plain functions, inputs chosen by their annotations."""


def shout(ctx, text: str) -> str:
    """Upper-case the text and add the configured suffix."""
    return text.strip().upper() + ctx.params["suffix"] + "\n"


def count_words(text: str) -> dict:
    """Count the words of a shouted file (returned as JSON)."""
    return {"words": len(text.split()), "chars": len(text)}


def summary(counts: dict[str, dict]) -> str:
    """One Markdown line per file, keyed by entity id (the file name)."""
    lines = ["# Summary", ""]
    for name, c in sorted(counts.items()):
        lines.append(f"- {name}: {c['words']} words")
    lines.append(f"\nTotal: {sum(c['words'] for c in counts.values())} words\n")
    return "\n".join(lines)
