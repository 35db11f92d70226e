"""Freed memory back to the system after a pass that read every record (glibc's malloc_trim).

A full check of a fan-in at 100,000 members reads every manifest and stat entry of its members
once; the objects go when the maps cool, but the C heap keeps the pages it got for them
(resident memory stays at the pass's peak). `trim` hands the free ones back; elsewhere than
glibc it does nothing.
"""

from __future__ import annotations

from typing import Any

_LIBC: Any = None
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def trim() -> None:
    """Return free heap pages to the system (a no-op where malloc_trim is not there)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


def one_arena() -> bool:
    """Have glibc serve every thread from its main heap (mallopt M_ARENA_MAX = 1), for the
    arenas made from now on; False where that cannot be done.

    Each thread that allocates gets an arena of its own (up to 8 per core), and memory freed in
    one stays there: a fan-in call reading 100,000 members in a handler thread left its arena's
    pages pinned by a few live objects, which malloc_trim could not return (`serve` settled at
    156-165 MB after 20 drops at 100,000 entities, 135 MB on one arena). With the GIL, threads
    seldom allocate at once, so the one lock costs little."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False
