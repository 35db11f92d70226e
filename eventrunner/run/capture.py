"""What a handler attempt prints and logs, kept (bounded) with its record (issue 10.5).

`capturing()` routes whatever the calling thread (or asyncio task) writes to `sys.stdout` and
`sys.stderr` into that attempt's own `Capture`, and `ctx.log` lines too (at every level, whatever
the logging configuration says). `sys.stdout` is process-wide, so it is replaced once by a
proxy that asks a context variable where each write goes: concurrent handlers in worker
threads each fill their own buffer (a new thread starts with an empty context), and writes
from any other code still reach the real stream. A buffer keeps the last `MAX_CHARS`
characters and counts what it dropped. The text leaves the worker masked (core/redact.py):
a process worker knows the secrets its handler read, the coordinator does not.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from eventrunner.core.redact import RedactingFilter, redact

MAX_CHARS = 64 * 1024  # kept per attempt: the last 64 KiB of text
_ATTR = "eventrunner_output"  # the captured text, on the exception a failed attempt raised

_current: contextvars.ContextVar[Capture | None] = contextvars.ContextVar(
    "eventrunner_capture", default=None
)
_install_lock = threading.Lock()


class Capture:
    """One attempt's output: appended text, of which the last MAX_CHARS are kept."""

    __slots__ = ("_chunks", "_size", "dropped")

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._size = 0
        self.dropped = 0  # characters dropped from the start

    def write(self, text: str) -> None:
        """Append text (compacted to the last MAX_CHARS once twice that has piled up)."""
        if not text:
            return
        self._chunks.append(text)
        self._size += len(text)
        if self._size > 2 * MAX_CHARS:
            whole = "".join(self._chunks)
            self.dropped += len(whole) - MAX_CHARS
            self._chunks, self._size = [whole[-MAX_CHARS:]], MAX_CHARS

    def text(self) -> str:
        """What was kept, secrets masked, with a first line saying how much was dropped."""
        whole = "".join(self._chunks)
        if len(whole) > MAX_CHARS:
            self.dropped += len(whole) - MAX_CHARS
            whole = whole[-MAX_CHARS:]
            self._chunks, self._size = [whole], MAX_CHARS
        if not whole:
            return ""
        head = f"[... {self.dropped} earlier characters dropped ...]\n" if self.dropped else ""
        return redact(head + whole)


class _Routed:
    """Stands in for sys.stdout or sys.stderr: a write goes to the current attempt's capture,
    or to the stream it replaced when no attempt runs in this thread or task."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        capture = _current.get()
        if capture is None:
            return self._stream.write(text)
        capture.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current.get() is None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer, ...
        return getattr(self._stream, name)


def _install() -> None:
    """Put the proxies in place (again after someone else replaced sys.stdout: a test's
    capture, a progress bar's redirect); cheap when they are there."""
    if isinstance(sys.stdout, _Routed) and isinstance(sys.stderr, _Routed):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _Routed) and sys.stdout is not None:
            sys.stdout = _Routed(sys.stdout)
        if not isinstance(sys.stderr, _Routed) and sys.stderr is not None:
            sys.stderr = _Routed(sys.stderr)


@contextmanager
def capturing() -> Iterator[Capture]:
    """Capture this thread's (or task's) stdout and stderr writes for one attempt."""
    _install()
    capture = Capture()
    token = _current.set(capture)
    try:
        yield capture
    finally:
        _current.reset(token)


class HandlerLog(logging.LoggerAdapter[logging.Logger]):
    """`ctx.log`: a logger for the stage that also keeps each line in the attempt's capture,
    at any level (under `run` without -v, INFO lines reach no terminal, but `logs` shows them)."""

    sink: Capture | None = None

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.sink is not None:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self.sink.write(f"{logging.getLevelName(level)}: {text}\n")
        # Logged as before, but not captured twice: a worker process's last-resort handler
        # writes to sys.stderr, which would route the line into the capture again.
        token = _current.set(None)
        try:
            super().log(level, msg, *args, **kwargs)
        finally:
            _current.reset(token)


def attach(exc: BaseException, text: str) -> BaseException:
    """Carry a failed attempt's output on the exception it raised (to the engine's `_fail`)."""
    if text:
        try:
            setattr(exc, _ATTR, text)
        except (AttributeError, TypeError):  # an exception type without a __dict__
            pass
    return exc


def output_of(exc: BaseException) -> str:
    """The output a failed attempt's exception carries (or the one it was raised from)."""
    for current in (exc, exc.__cause__, exc.__context__):
        text = getattr(current, _ATTR, "") if current is not None else ""
        if isinstance(text, str) and text:
            return text
    return ""


def guard_logging() -> None:
    """Mask secrets in whatever this process logs (its handlers and the last-resort one)."""
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
