"""Daemon-wide event bus: instance state changes and operations, fanned out to followers."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "state" | "service" | "scale" | "reload" | "daemon"
    service: str = ""
    instance: str = ""
    old: str = ""
    new: str = ""
    detail: str = ""
    pid: int | None = None
    port: int | None = None
    retry_at: float | None = None  # a failed instance's next retry (wall clock)
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class EventBus:
    """Keeps a short history and feeds live subscribers; a slow subscriber loses events, never blocks."""

    def __init__(self, history: int = 1000) -> None:
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def emit(self, event: Event) -> None:
        self._history.append(event)
        for queue in self._subscribers:
            if queue.full():
                continue  # dropping beats blocking the daemon on one slow reader
            queue.put_nowait(event)

    def recent(self, n: int | None = None) -> list[Event]:
        events = list(self._history)
        if n is None:
            return events
        return events[-n:] if n > 0 else []

    async def follow(self, maxsize: int = 10000) -> AsyncGenerator[Event, None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every follower's iteration."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
