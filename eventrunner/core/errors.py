"""One exception tree for eventrunner; the CLI and HTTP layers map it to exit and status codes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class EventRunnerError(Exception):
    """Base of every error eventrunner raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (file, field) and why."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.reason}"


class ConfigError(EventRunnerError):
    """Raised when the workspace config or pipeline files are invalid; carries every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PatternError(EventRunnerError, ValueError):
    """Raised when a pattern is malformed or a value cannot be bound to it safely."""


class DurationError(EventRunnerError, ValueError):
    """Raised when a duration text such as "30s" cannot be parsed."""


class WorkspaceNotFound(EventRunnerError):
    """Raised when no workspace (eventrunner.toml or pipelines/) is found."""


class LockHeld(EventRunnerError):
    """Raised when another process owns the workspace lock."""


class UnknownName(EventRunnerError, LookupError):
    """Raised when a pipeline, stage, source or entity named by the user does not exist."""


class UsageError(EventRunnerError):
    """Raised when a command or request is malformed."""


class HandlerError(EventRunnerError):
    """Raised when a handler cannot be loaded or its return value cannot be stored."""


class HandlerTimeout(EventRunnerError):
    """Raised when a handler runs longer than its stage's timeout."""


class PermanentError(EventRunnerError):
    """Raised by a handler for bad input that no retry will fix: the state goes straight to dead."""


class RetryLater(EventRunnerError):
    """Raised by a handler for a transient failure; `retry_after` (seconds) overrides the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class SignatureError(EventRunnerError):
    """Raised when a webhook signature is missing, malformed, expired or wrong."""


class IntakeFull(EventRunnerError):
    """Raised when the webhook intake is at capacity; the sender should retry later."""


class StorageError(EventRunnerError):
    """Raised when durable storage fails (fsync, disk full); nothing half-written is kept."""


class ServerUnavailable(EventRunnerError):
    """Raised when a running server was expected but could not be reached."""


def did_you_mean(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """ " (did you mean 'x'?)" naming the closest candidates to a mistyped name (each shown with
    `prefix`, e.g. its pipeline), or ""."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)"
