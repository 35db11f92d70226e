"""Human renderings of what commands answer (their --json prints the data as it is)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventrunner.core.durations import format_duration, format_time
from eventrunner.core.tracebacks import handler_first

LIMIT = 20  # lines of a listing before "... and N more"


def _listing(items: Sequence[str], indent: str = "  ") -> list[str]:
    out = [f"{indent}{x}" for x in items[:LIMIT]]
    if len(items) > LIMIT:
        out.append(f"{indent}... and {len(items) - LIMIT} more (--json lists them all)")
    return out


def _states(pairs: Sequence[dict[str, str]]) -> list[str]:
    return [f"{p['stage']} {p['entity']}" for p in pairs]


def managed(action: str, result: dict[str, Any], served: bool) -> list[str]:
    """What invalidate, retry, hold or release did, and what happens next."""
    later = "the server checks them now" if served else "they run at the next `eventrunner run`"
    if action == "retry":
        cleared = result["cleared"]
        if not cleared:
            return ["nothing to retry: no failed or dead state"]
        return [f"cleared {len(cleared)} failure(s); {later}:", *_listing(_states(cleared))]
    if action == "invalidate":
        stages, entities, below = result["stages"], result["entities"], result["downstream"]
        if entities == ["*"]:
            lines = [f"invalidated every state of {stages[0]}"]
            lines += [f"  and of the stage below it: {q}" for q in stages[1:]]
        else:
            lines = [f"invalidated {len(entities)} state(s) of {stages[0]}: {', '.join(entities)}"]
            if below:
                lines += [
                    f"  and {len(below)} state(s) downstream:",
                    *_listing(_states(below), "    "),
                ]
        return [*lines, f"{later}"]
    verb = "held" if result["held"] else "released"
    what = (
        f"every state of {result['stage']}"
        if result["entities"] == ["*"]
        else f"{result['stage']}: {', '.join(result['entities'])}"
    )
    if result["held"]:
        return [f"{verb} {what}; it runs again after `eventrunner release {result['stage']}`"]
    return [f"{verb} {what}; {later}"]


def traceback_lines(text: str, workspace: Path, *, full: bool = True) -> list[str]:
    """A recorded traceback with the frames of the workspace's handler files first (paths
    shown relative to the workspace); not `full`: those frames and the error line only."""
    handlers = f"{workspace / 'handlers'}/"
    top = f"{workspace}/"

    def is_handler(name: str) -> bool:  # a Dask worker runs them from an unpacked bundle
        return name.startswith(handlers) or "/eventrunner-bundles/" in name

    return handler_first(text, is_handler, lambda name: name.removeprefix(top), others=full)


def explained(rows: list[dict[str, Any]], workspace: Path | None = None) -> list[str]:
    """`explain` for people: per stage its state, reasons, last run and last failure (with
    its traceback, the handler's frames first, when the workspace folder is given)."""
    out = []
    for row in rows:
        out.append(f"{row['stage']} {row['entity']}: {row['state']}")
        out += [f"  {r['code']}: {r['message']}" for r in row["reasons"]]
        m = row.get("manifest")
        if m and m.get("finished_ns"):
            out.append(
                f"  last produced {format_time(m['finished_ns'] / 1e9)} "
                f"(attempt {m.get('attempt', 1)}, took {format_duration(m.get('duration_s', 0))})"
            )
        f = row.get("failure")
        if f:
            first = (f["error"].splitlines() or [""])[0]
            out.append(
                f"  last failure (attempt {f['attempts']}, {format_time(f['last_failed'])}): {first}"
            )
            if f.get("dead"):
                out.append(
                    f"  dead: runs again after `eventrunner retry {row['stage']} {row['entity']}`"
                )
            elif f.get("next_retry"):
                out.append(f"  next retry at {format_time(f['next_retry'])}")
            if workspace is not None and f.get("traceback"):
                out += [f"  {line}" for line in traceback_lines(f["traceback"], workspace)]
    return out
