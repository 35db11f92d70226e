"""Pure staleness decisions: facts about one (stage, entity) in, a state and its reasons out."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eventrunner.core.durations import format_time
from eventrunner.core.records import Failure, Manifest

State = Literal["fresh", "stale", "running", "failed", "dead", "held", "waiting", "orphaned"]
STATES: tuple[State, ...] = (
    "fresh",
    "stale",
    "running",
    "failed",
    "dead",
    "held",
    "waiting",
    "orphaned",
)


@dataclass(frozen=True)
class RetryRule:
    """How a stage retries: exponential backoff with full jitter, dead after max_attempts
    (the workspace's validated `RetryPolicy` converted to plain data at load time)."""

    max_attempts: int = 10
    backoff: float = 30.0
    max_backoff: float = 3600.0


@dataclass(frozen=True)
class Reason:
    """A reason code of DESIGN.md section 5 with its details."""

    code: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data for --json and the API."""
        return {
            "code": self.code,
            "message": self.message,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class Verdict:
    """The state of one (stage, entity) and why."""

    state: State
    reasons: tuple[Reason, ...] = ()
    # A failed state whose retry time has come: still shown as failed (with its retry time,
    # never as "never produced"), and run like a stale one (issue 10.4).
    retry_due: bool = False

    @property
    def runnable(self) -> bool:
        """True when the executor should run it now."""
        return self.state == "stale" or self.retry_due


@dataclass
class Facts:
    """Everything the decision needs, gathered by the caller from the index."""

    manifest: Manifest | None
    code: str
    params: str
    inputs: Mapping[str, Mapping[str, str]]  # input name -> {relpath: hash} as found now
    missing_inputs: list[str]  # relpaths of required inputs that do not exist
    upstream_not_fresh: list[str]  # "stage entity (state)" of producers that are not fresh
    outputs_now: dict[str, str | None]  # manifest output relpath -> hash now (None: missing)
    failure: Failure | None
    attempt_key: str
    held: bool = False
    invalidated_ns: int = 0
    running: bool = False
    exists: bool = True
    now: float = 0.0


FRESH = Verdict("fresh")  # shared: most verdicts of a large workspace are this one


def staleness_reasons(f: Facts, input_reasons: list[Reason] | None = None) -> list[Reason]:
    """Why the recorded state differs from today's code, params, inputs and output.
    `input_reasons`: the input part, already known (an aggregate's cert, run/aggregates.py)."""
    m = f.manifest
    if m is None:
        return [Reason("MISSING", "never produced (no manifest)")]
    out: list[Reason] = []
    missing = [p for p, h in f.outputs_now.items() if h is None]
    if missing:
        out.append(
            Reason(
                "MISSING",
                f"output missing: {', '.join(missing) or '(none recorded)'}",
                {"paths": missing},
            )
        )
    if m.code != f.code:
        out.append(
            Reason(
                "CODE_CHANGED", "handler code or version changed", {"old": m.code, "new": f.code}
            )
        )
    if m.params != f.params:
        out.append(Reason("PARAMS_CHANGED", "params changed", {"old": m.params, "new": f.params}))
    recorded_outputs = m.outputs  # built on access: once here
    out += input_reasons if input_reasons is not None else _input_reasons(m.inputs, f.inputs)
    for path, h in sorted(f.outputs_now.items()):
        if h is not None and recorded_outputs.get(path) != h:
            out.append(
                Reason(
                    "OUTPUT_MODIFIED",
                    f"output {path} was modified outside eventrunner",
                    {"path": path, "recorded": recorded_outputs.get(path), "now": h},
                )
            )
    if f.invalidated_ns and f.invalidated_ns > m.finished_ns:
        out.append(Reason("INVALIDATED", "invalidated by request"))
    return out


def _input_reasons(
    recorded: Mapping[str, Mapping[str, str]], now: Mapping[str, Mapping[str, str]]
) -> list[Reason]:
    """INPUT_ADDED / INPUT_REMOVED / INPUT_CHANGED for each input file that differs."""
    out: list[Reason] = []
    for name in sorted(set(recorded) | set(now)):
        old, new = recorded.get(name, {}), now.get(name, {})
        for path in sorted(set(old) | set(new)):
            if path not in old:
                detail = {"input": name, "path": path, "new": new[path]}
                out.append(Reason("INPUT_ADDED", f"input {name}: {path} added", detail))
            elif path not in new:
                detail = {"input": name, "path": path, "old": old[path]}
                out.append(Reason("INPUT_REMOVED", f"input {name}: {path} removed", detail))
            elif old[path] != new[path]:
                detail = {"input": name, "path": path, "old": old[path], "new": new[path]}
                out.append(Reason("INPUT_CHANGED", f"input {name}: {path} changed", detail))
    return out


def decide(f: Facts, input_reasons: list[Reason] | None = None) -> Verdict:
    """Apply the precedence: running, orphaned, held, waiting, fresh, dead, backoff, stale
    (`input_reasons`: see staleness_reasons)."""
    if f.running:
        return Verdict("running")
    if not f.exists:
        return Verdict(
            "orphaned",
            (
                Reason(
                    "INPUT_REMOVED",
                    "every input binding this entity is gone; `prune` deletes the output",
                ),
            ),
        )
    waiting: list[Reason] = []
    if f.missing_inputs:
        waiting.append(
            Reason(
                "UPSTREAM_NOT_FRESH",
                f"input missing: {', '.join(f.missing_inputs)}",
                {"missing": f.missing_inputs},
            )
        )
    if f.upstream_not_fresh:
        waiting.append(
            Reason(
                "UPSTREAM_NOT_FRESH",
                f"waiting for {', '.join(f.upstream_not_fresh[:5])}"
                + (" ..." if len(f.upstream_not_fresh) > 5 else ""),
                {"upstream": f.upstream_not_fresh},
            )
        )
    reasons = [] if waiting else staleness_reasons(f, input_reasons)
    if f.held:
        return Verdict("held", (Reason("HELD", "on manual hold"), *waiting, *reasons))
    if waiting:
        return Verdict("waiting", tuple(waiting))
    if not reasons:
        return FRESH
    failed = _failure_verdict(f, reasons)
    return failed if failed is not None else Verdict("stale", tuple(reasons))


def _failure_verdict(f: Facts, reasons: list[Reason]) -> Verdict | None:
    """dead, or failed (backing off, or its retry due), when a failure of this very attempt is
    on record."""
    fail = f.failure
    if fail is None or fail.key != f.attempt_key:
        return None
    if fail.dead:
        return Verdict(
            "dead",
            (
                Reason(
                    "DEAD",
                    f"failed {fail.attempts} times, last: {fail.error}; waiting for a manual retry",
                    {"attempts": fail.attempts},
                ),
                *reasons,
            ),
        )
    if fail.next_retry is None:
        return None
    due = fail.next_retry <= f.now
    when = "retry due since" if due else "retry at"
    return Verdict(
        "failed",
        (
            Reason(
                "BACKOFF",
                f"attempt {fail.attempts} failed: {fail.error}; "
                f"{when} {format_time(fail.next_retry)}",
                {"attempts": fail.attempts, "retry_at": fail.next_retry},
            ),
            *reasons,
        ),
        retry_due=due,
    )


def backoff_delay(policy: RetryRule, attempts: int, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(max_backoff, backoff * 2^(attempts-1))]."""
    cap = min(policy.max_backoff, policy.backoff * (2 ** max(0, attempts - 1)))
    return (rng or random).uniform(0.0, cap)


def after_failure(
    policy: RetryRule,
    previous: Failure | None,
    *,
    stage: str,
    entity: str,
    key: str,
    error: str,
    traceback: str,
    now: float,
    permanent: bool = False,
    retry_after: float | None = None,
) -> Failure:
    """The failure record after one more failed attempt: backoff or dead."""
    attempts = (previous.attempts if previous is not None and previous.key == key else 0) + 1
    first = previous.first_failed if previous is not None and previous.key == key else now
    dead = permanent or attempts >= policy.max_attempts
    delay = retry_after if retry_after is not None else backoff_delay(policy, attempts)
    return Failure(
        stage=stage,
        entity=entity,
        key=key,
        attempts=attempts,
        error=error,
        traceback=traceback,
        first_failed=first,
        last_failed=now,
        next_retry=None if dead else now + delay,
        dead=dead,
    )
