"""Index saves in a thread while serving: the loop goes on meanwhile, saves stay in order."""

from __future__ import annotations

import asyncio
import weakref

from eventrunner.state.index import Index

_save_locks: weakref.WeakKeyDictionary[Index, asyncio.Lock] = weakref.WeakKeyDictionary()


async def save_in_thread(idx: Index) -> None:
    """Index.save with the writing in a thread (the loop goes on changing state and reading
    the index); one at a time per index, so that saves reach the disk in the order taken."""
    async with _save_locks.setdefault(idx, asyncio.Lock()):
        generation, data = idx.snapshot()
        try:
            await asyncio.to_thread(idx.write_snapshot, data)
        except BaseException:
            idx.failed_save()
            raise
        idx.saved(generation)
