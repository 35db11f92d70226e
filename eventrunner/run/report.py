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
        )

    def lines(self, limit: int = 20) -> list[str]:
        """The human summary: one line of counts, then the first `limit` failures."""
        out = [
            f"executed {self.executed}: {self.succeeded} succeeded, {self.failed} failed; "
            f"{self.skipped} skipped (held, failed, dead or waiting) in {self.duration_s}s"
        ]
        out += [f"  FAILED {f['stage']} {f['entity']}: {f['error']}" for f in self.failures[:limit]]
        return out
