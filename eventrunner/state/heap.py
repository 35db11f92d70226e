"""Freed memory back to the system after a pass that read every record (glibc's malloc_trim).

A full check of a fan-in at 100,000 members reads every manifest and stat entry of its members
once; the objects go when the maps cool, but the C heap keeps the pages it got for them
(resident memory stays at the pass's peak). `trim` hands the free ones back; elsewhere than
glibc it does nothing.
"""

from __future__ import annotations

from typing import Any

_LIBC: Any = None


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
