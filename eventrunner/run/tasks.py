"""Ending background work: tasks cancelled then awaited, resources closed once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task first (so none waits on another still running), then await each,
    swallowing what they raise: a task that failed has logged its error already."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class ClosesOnce:
    """An async context manager whose `close()` does its work (`_release`) the first time only:
    later calls, and the exit after an explicit close, return at once."""

    _closed = False

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release what this holds; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._release()

    async def _release(self) -> None:
        raise NotImplementedError
