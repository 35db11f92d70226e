"""Cron text of generator stages, checked with APScheduler's own parser (imported only when used)."""

from __future__ import annotations


def validate_cron(text: str) -> str | None:
    """None if `text` is a valid 5-field crontab expression, else the reason it is not."""
    # APScheduler costs ~80 ms to import: only workspaces with a schedule pay for it.
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        return str(exc)
    return None
