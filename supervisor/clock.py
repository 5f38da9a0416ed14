"""Time as a dependency: instances and services sleep and read the time through a Clock.

Production uses SystemClock. Tests inject a clock whose sleeps return at once and advance its
time, so a crash-loop cool-down of minutes or a start timeout runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for decisions, wall time for display, and sleeping."""

    def now(self) -> float:
        """Monotonic seconds (differences only)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps users read."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for `event` at most `timeout` seconds; True if it was set."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True


SYSTEM_CLOCK = SystemClock()
