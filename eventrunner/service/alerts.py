"""Alerts: when a state goes dead under `serve`, post a message to a webhook (issue 10.9).

The `[alert]` setting names the environment variable holding the URL (a Slack incoming webhook
or a Discord webhook URL is its own credential): read once at start, remembered as a secret,
never logged or answered. The JSON body carries the message as both `text` (Slack) and
`content` (Discord). Sending never blocks the engine: `dead` events go into a bounded queue
that one task empties, several dead states to one message; a failed post (a connection error,
a timeout, any answer but 2xx) is tried again with exponential backoff, `max_attempts` in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from eventrunner.core.errors import ConfigError, Problem
from eventrunner.core.redact import redact, remember_secret
from eventrunner.run.events import Dead, Event, EventBus
from eventrunner.workspace.settings import AlertSettings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("eventrunner.alerts")

QUEUE_MAX = 1000  # dead states waiting to be told; beyond this they are counted, not queued
BATCH_MAX = 20  # dead states named in one message


def alert_url(settings: AlertSettings) -> str:
    """The webhook URL from the environment; ConfigError naming the field (never the value)."""
    value = os.environ.get(settings.url_env, "").strip()
    if not value:
        raise ConfigError(
            [
                Problem(
                    "eventrunner.toml",
                    "alert.url_env",
                    f"environment variable {settings.url_env} is not set "
                    "(it holds the alert webhook URL)",
                )
            ]
        )
    remember_secret(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            [
                Problem(
                    "eventrunner.toml",
                    "alert.url_env",
                    f"environment variable {settings.url_env} does not hold an http(s) URL",
                )
            ]
        )
    return value


def message(events: list[Dead], workspace: str, more: int = 0) -> str:
    """The alert's text: which states went dead, after how many attempts, with the last error."""
    lines = [
        f"eventrunner ({workspace}): {e.stage} {e.entity} is dead after {e.attempts} "
        f"attempt(s): {(e.error.splitlines() or [''])[0][:300]}"
        for e in events
    ]
    if more:
        lines.append(f"... and {more} more dead state(s) not listed")
    return redact("\n".join(lines))


class Alerter:
    """Listens for `dead` events on the bus and posts them to the webhook, off the engine's path.

    `async with Alerter(settings, url, bus, workspace):` starts the sender; leaving stops it
    (alerts still unsent are dropped with a warning: a stop must not wait on a webhook)."""

    def __init__(self, settings: AlertSettings, url: str, bus: EventBus, workspace: str) -> None:
        self.settings = settings
        self._url = url
        self._bus = bus
        self._workspace = workspace
        self._queue: asyncio.Queue[Dead] = asyncio.Queue(QUEUE_MAX)
        self._overflow = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # messages delivered
        self.failed = 0  # messages given up on after max_attempts

    async def __aenter__(self) -> Alerter:
        import aiohttp  # here: serve imports it after its watchers are up and its look begun

        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self._send_loop(), name="eventrunner-alerts")
        self._bus.subscribe(self._on_event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and sending; safe to call twice."""
        self._bus.unsubscribe(self._on_event)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._queue.empty() or self._overflow:
            log.warning("stopping with %d dead-state alert(s) unsent", self._queue.qsize())
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Dead):
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                self._overflow += 1  # told as "... and N more" in the next message

    async def _send_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Those still queued go in the next message; those the full queue refused, here.
            more, self._overflow = self._overflow, 0
            text = message(batch, self._workspace, more)
            if await self.post(text):
                self.sent += 1
            else:
                self.failed += 1
                log.error(
                    "alert for %d dead state(s) not delivered after %d attempt(s)",
                    len(batch),
                    self.settings.max_attempts,
                )

    async def post(self, text: str) -> bool:
        """POST {"text", "content"} until a 2xx answer, at most max_attempts times with
        exponential backoff (a 429's Retry-After honoured up to max_backoff); True if delivered."""
        import aiohttp  # imported by __aenter__ already

        assert self._session is not None
        s = self.settings
        delay = s.backoff
        for attempt in range(1, s.max_attempts + 1):
            wait = delay
            try:
                async with self._session.post(
                    self._url, json={"text": text, "content": text}, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    why = f"HTTP {resp.status}"
                    wait = max(wait, _retry_after(resp.headers.get("Retry-After")))
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = redact(f"{type(exc).__name__}: {exc}")  # the URL may be in its text
            if attempt == s.max_attempts:
                log.warning("alert attempt %d failed (%s); giving up", attempt, why)
                break
            wait = min(wait, s.max_backoff)
            log.warning("alert attempt %d failed (%s); trying again in %.1fs", attempt, why, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, s.max_backoff)
        return False


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header given in seconds (a date, or none: 0)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


async def start_alerts(
    settings: AlertSettings | None, bus: EventBus, workspace: str
) -> Alerter | None:
    """The running alerter for `[alert]`, or None when none is configured; ConfigError when the
    URL's environment variable is unset or holds no http(s) URL."""
    if settings is None:
        return None
    alerter = Alerter(settings, alert_url(settings), bus, workspace)
    return await alerter.__aenter__()
