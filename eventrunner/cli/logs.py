"""Logging as the CLI sets it up: one line per event, secrets masked, floods of identical lines cut.

A flood of hostile connections once wrote 21,000+ identical lines within seconds (issue 14.4):
an identical line (same logger, level and text) is let through `BURST` times per `WINDOW`
seconds; the next one after the window says how many were held back.
"""

from __future__ import annotations

import logging
import time

from eventrunner.core.redact import RedactingFilter

BURST = 5
WINDOW = 10.0
_MAX_KEYS = 1024


class RateLimitFilter(logging.Filter):
    """Drops a line repeated more than BURST times within WINDOW seconds."""

    def __init__(self, burst: int = BURST, window: float = WINDOW) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [start, count, held]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[2]) if entry is not None else 0
            if len(self._seen) >= _MAX_KEYS:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
            self._seen[key] = [now, 1, 0]
            if held:
                record.msg, record.args = f"{key[2]} ({held} identical lines held back)", None
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        entry[2] += 1
        return False


def setup_logging(verbose: int) -> None:
    """Root logging for a command: WARNING, INFO (-v) or DEBUG (-vv), with both filters."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # secrets never reach the log (issue 14.3)
        handler.addFilter(RateLimitFilter())
