"""One exception tree for eventrunner; the CLI and HTTP layers map it to exit and status codes."""

from __future__ import annotations

import errno
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


class WorkerLost(EventRunnerError):
    """Raised when the worker running a handler died (os._exit, a signal, out of memory)."""


class ExecutorUnavailable(EventRunnerError):
    """Raised when the configured executor cannot start: its package is missing or its
    scheduler cannot be reached."""


class CodeChanged(EventRunnerError):
    """Raised when a worker's copy of a handler has another code identity than the one the
    coordinator would record for its output (the handler was edited meanwhile)."""


class PermanentError(EventRunnerError):
    """Raised by a handler for bad input that no retry will fix: the state goes straight to dead."""


class RetryLater(EventRunnerError):
    """Raised by a handler for a transient failure; `retry_after` (seconds) overrides the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class NeedFullCall(EventRunnerError):
    """Raised by an incremental fan-in handler (a `Changes` input) that cannot fold these
    changes into its previous output (say, a removed member's share is not in it): it is
    called again at once with every member, as on a first run."""


class SignatureError(EventRunnerError):
    """Raised when a webhook signature is missing, malformed, expired or wrong."""


class IntakeFull(EventRunnerError):
    """Raised when the webhook intake is at capacity; the sender should retry later."""


class StorageError(EventRunnerError):
    """Raised when durable storage fails (fsync, disk full); nothing half-written is kept."""


class ShuttingDown(EventRunnerError):
    """Raised when a request cannot be finished because the server is stopping."""


class ServerUnavailable(EventRunnerError):
    """Raised when a running server was expected but could not be reached."""


# What the CLI and the HTTP layer answer for each error, beside the tree itself: one lookup
# walks an error's class hierarchy, most specific class first (starlette's handler lookup).
EXIT_CODES: dict[type[BaseException], int] = {
    ConfigError: 2,
    UsageError: 2,
    WorkspaceNotFound: 2,
    UnknownName: 2,
    ExecutorUnavailable: 2,
    LockHeld: 3,
    ServerUnavailable: 3,
    ShuttingDown: 3,
    EventRunnerError: 1,
}
HTTP_STATUS: dict[type[BaseException], int] = {
    SignatureError: 401,
    UnknownName: 404,
    PatternError: 400,
    UsageError: 400,
    IntakeFull: 503,
    StorageError: 503,
    ShuttingDown: 503,
    EventRunnerError: 500,
}


def _lookup(table: dict[type[BaseException], int], exc: BaseException, default: int) -> int:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def exit_code_for(exc: BaseException) -> int:
    """The CLI's exit code for an error."""
    return _lookup(EXIT_CODES, exc, 1)


def http_status_for(exc: BaseException) -> int:
    """The HTTP status for an error."""
    return _lookup(HTTP_STATUS, exc, 500)


# OSErrors of the machine, not of eventrunner: a full disk, a quota, a read-only or failing
# filesystem, no file descriptors left, no permission. Told in one line, without a traceback.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
        errno.EACCES,
        errno.EPERM,
    }
)


def is_environmental(exc: BaseException) -> bool:
    """True for an OSError that says what the machine lacks (see ENVIRONMENT_ERRNOS)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def did_you_mean(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """ " (did you mean 'x'?)" naming the closest candidates to a mistyped name (each shown with
    `prefix`, e.g. its pipeline), or ""."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)"
