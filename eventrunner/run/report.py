"""The one run-report type: what a `run` did, filled by the engine and printed by the CLI.

Every way of running reports through it: the no-change fast path (mode "stat"), a full or
incremental run, a dry run (`would_run`), and a run done by a server (mode "server"), whose
JSON answer the CLI turns back into one. Standard library only: the fast path imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODES = ("stat", "full", "incremental", "server", "dry-run")


@dataclass
class RunReport:
    """Counts of one run; `ran` (which states started) is the engine's own, never printed."""

    executed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    duration_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    mode: str = ""
    would_run: list[dict[str, str]] | None = None  # dry runs only: {"stage", "entity"} each
    # Selected states not fresh afterwards: {"stage", "entity", "state", "reason", "held"}.
    not_fresh: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # silent no-ops (run/noops.py)
    ran: set[tuple[str, str]] = field(default_factory=set, metadata={"wire": False})

    def to_json(self) -> dict[str, Any]:
        """Plain data for `run --json` and the server's answer (`would_run` only when set)."""
        out: dict[str, Any] = {
            "executed": self.executed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "duration_s": self.duration_s,
            "failures": self.failures,
            "mode": self.mode,
            "not_fresh": self.not_fresh,
            "warnings": self.warnings,
        }
        if self.would_run is not None:
            out["would_run"] = self.would_run
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunReport:
        """A report answered over HTTP (unknown keys ignored: a newer server may add some)."""
        return cls(
            executed=int(data["executed"]),
            succeeded=int(data["succeeded"]),
            failed=int(data["failed"]),
            skipped=int(data["skipped"]),
            duration_s=float(data["duration_s"]),
            failures=list(data.get("failures", [])),
            mode=str(data.get("mode", "")),
            would_run=data.get("would_run"),
            not_fresh=list(data.get("not_fresh", [])),
            warnings=list(data.get("warnings", [])),
        )

    def exit_code(self) -> int:
        """0 when nothing failed and every selected state is fresh afterwards, but for held
        ones (and those waiting only on them): a hold says "do not bring this up to date"."""
        return 1 if self.failed or any(not e.get("held") for e in self.not_fresh) else 0

    def lines(self, limit: int = 20) -> list[str]:
        """The human summary: one line of counts, each failure once (the first `limit`), then the
        other states that are not fresh and why."""
        out = [
            f"executed {self.executed}: {self.succeeded} succeeded, {self.failed} failed; "
            f"{self.skipped} skipped (held, failed, dead or waiting) in {self.duration_s}s"
        ]
        shown: dict[tuple[str, str], str] = {}
        for f in self.failures:  # a state failing twice (serve retries it) is shown once
            shown[(str(f["stage"]), str(f["entity"]))] = _first_line(f.get("error"))
        out += [f"  FAILED {q} {e}: {err}" for (q, e), err in list(shown.items())[:limit]]
        if len(shown) > limit:
            out.append(f"  ... and {len(shown) - limit} more failures")
        return out + not_fresh_lines(self.not_fresh, True, limit, set(shown))


def not_fresh_lines(
    entries: list[dict[str, Any]],
    allow_held: bool = False,
    limit: int = 20,
    shown: set[tuple[str, str]] | None = None,
) -> list[str]:
    """The states that are not fresh, each with why (`shown` ones, printed already, skipped)."""
    if not entries:
        return []
    held = sum(1 for e in entries if e.get("held"))
    note = f", {held} of them held" + (" (not counted)" if allow_held else "") if held else ""
    out = [f"not fresh: {len(entries)} selected state(s){note}"]
    rest = [e for e in entries if (e["stage"], e["entity"]) not in (shown or set())]
    out += [f"  {e['state'].upper()} {e['stage']} {e['entity']}: {_why(e)}" for e in rest[:limit]]
    if len(rest) > limit:
        out.append(f"  ... and {len(rest) - limit} more (--json lists them all)")
    return out


def _why(entry: dict[str, Any]) -> str:
    """An entry's reason on one line, with a failed state's retry time."""
    why = _first_line(entry.get("reason"))
    if entry.get("retry_at"):
        from eventrunner.core.durations import format_time

        why = f"{why.split('; retry at ')[0]} (retry at {format_time(entry['retry_at'])})"
    return why


def _first_line(text: Any) -> str:
    return (str(text or "").splitlines() or [""])[0]
