"""A clock for unit tests: sleeping returns at once and moves time forward (like trio's
autojump clock), so minutes of backoff or cool-down take no real time."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = start
        self._wall_offset = wall - start
        self.sleeps: list[float] = []  # every sleep, in order
        self.waits: list[float] = []  # every wait's timeout (backoff, cool-down), in order

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        self.waits.append(timeout)
        # Give whoever may set the event a chance first, then let the time pass.
        await asyncio.sleep(0)
        if not event.is_set():
            self.t += timeout
        return event.is_set()
