"""Giving memory back to the system after a burst of connections has gone.

A few hundred connections that each held a large read (up to 256 KB) leave glibc's heap with
tens of megabytes of free space that it keeps unless the very top of the heap is free, so the
daemon's RSS would stay at its peak after the clients left. `malloc_trim(0)` returns every
free page; the server's sweeper calls it when the connection count has fallen well below its
recent peak (see `Trimmer`). Other C libraries: nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Worth a trim: a peak at least this high, and fewer than half of it left.
TRIM_AFTER_PEAK = 100


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """Watches the connection count and trims the heap once a burst is over."""

    def __init__(self, trim: Callable[[], object] | None = None) -> None:
        self._trim = trim or _malloc_trim()  # None where the C library has no malloc_trim
        self._peak = 0

    def observe(self, connections: int) -> bool:
        """Called once per sweep; True when it trimmed."""
        if connections > self._peak:
            self._peak = connections
            return False
        if self._trim is None or self._peak < TRIM_AFTER_PEAK or connections * 2 > self._peak:
            return False
        log.debug("proxy: %d -> %d connections: returning free memory", self._peak, connections)
        self._peak = connections
        self._trim()
        return True
