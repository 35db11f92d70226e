"""Secret values never leave the process as text: not in recorded errors and tracebacks, log
lines, events or API answers (issue 14.3).

Every secret eventrunner reads (handler secrets through `ctx.secret`, webhook secrets, the
management token) is remembered here, in memory only, and masked wherever text is recorded:
where a failure is recorded, and by a logging filter the CLI installs. This module keeps the
process's one set of secret values; nothing here touches disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

MASK = "[redacted]"
# Shorter values would blank ordinary words and numbers all over the logs.
MIN_LENGTH = 4


class Redactor:
    """A set of secret values, and text with each of them (and its escaped forms) masked."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._regex: re.Pattern[str] | None = None
        self._lock = threading.Lock()  # handlers read secrets from worker threads

    def add(self, value: str) -> None:
        """Remember a secret value (too short ones are ignored)."""
        if len(value) < MIN_LENGTH or value in self._values:
            return
        forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1], quote(value, safe="")}
        with self._lock:
            self._values.update(form for form in forms if len(form) >= MIN_LENGTH)
            self._regex = None

    def add_all(self, values: Iterable[str]) -> None:
        """Remember several secret values."""
        for value in values:
            self.add(value)

    @property
    def active(self) -> bool:
        """True once some secret has been remembered."""
        return bool(self._values)

    def redact(self, text: str) -> str:
        """`text` with every remembered secret replaced by MASK."""
        if not self._values or not text:
            return text
        regex = self._regex
        if regex is None:
            with self._lock:
                # Longest first, so that a secret containing another is masked whole.
                alternatives = sorted(self._values, key=len, reverse=True)
                regex = self._regex = re.compile("|".join(map(re.escape, alternatives)))
        return regex.sub(MASK, text)

    def redact_exception(self, exc: BaseException) -> BaseException:
        """Mask secrets in the string arguments of an exception and of those chained to it, in
        place (before it is pickled to another process, which does not know the values)."""
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            current.args = tuple(self.redact(a) if isinstance(a, str) else a for a in current.args)
            notes = getattr(current, "__notes__", None)
            if isinstance(notes, list):
                notes[:] = [self.redact(n) if isinstance(n, str) else n for n in notes]
            current = current.__cause__ or current.__context__
        return exc


SECRETS = Redactor()


def remember_secret(value: str) -> None:
    """Remember a secret value read from the environment."""
    SECRETS.add(value)


def remember_env(names: Iterable[str | None]) -> None:
    """Remember the secrets held in these environment variables (webhook secrets, the token):
    each value, each of several separated by spaces, and a `whsec_` secret's key part."""
    for name in names:
        value = os.environ.get(name, "").strip() if name else ""
        for part in {value, *value.split()}:
            SECRETS.add_all([part, part.removeprefix("whsec_")])


def redact(text: str) -> str:
    """`text` with every secret seen so far masked."""
    return SECRETS.redact(text)


class RedactingFilter(logging.Filter):
    """A logging filter for handlers: masks secrets in the message and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not SECRETS.active:
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
