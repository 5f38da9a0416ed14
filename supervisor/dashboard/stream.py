"""`GET /v1/stats?follow=1`: the stats snapshot every tick, and at once after any event (SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from ..events import Event, EventBus
from ..stats import StatsFeed

# After an event, wait this long for the rest of its burst (a scale to 10 is ~30 events) so
# views get one fresh snapshot, not thirty.
_COALESCE = 0.05
_QUEUE = 10000
MIN_INTERVAL = 0.25
MAX_INTERVAL = 60.0


def frame(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def serve(
    request: web.Request, feed: StatsFeed, events: EventBus, interval: float, history: int
) -> web.StreamResponse:
    """Stream until the client leaves or the daemon closes the event bus (shutdown)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy in front must not buffer the stream
        }
    )
    await response.prepare(request)
    queue: asyncio.Queue[Event | None] = asyncio.Queue(_QUEUE)
    pump = asyncio.create_task(_pump(events, queue), name="stats-stream-events")
    try:
        await asyncio.sleep(0)  # let the pump subscribe before history is read
        for event in events.recent(history):
            await response.write(frame("event", event.to_json()))
        await response.write(frame("stats", feed.snapshot()))
        while True:
            batch, ended = await _collect(queue, interval)
            for event in batch:
                await response.write(frame("event", event.to_json()))
            if ended:
                break
            # Fresh after events (the view must show what just happened), shared on plain ticks.
            await response.write(frame("stats", feed.snapshot(0.0) if batch else feed.snapshot()))
    except ConnectionResetError:
        pass  # the view went away
    finally:
        # Cancelling the pump finalises the bus's generator inside it (it unsubscribes).
        pump.cancel()
        await asyncio.wait({pump})
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _pump(events: EventBus, queue: asyncio.Queue[Event | None]) -> None:
    async for event in events.follow():
        if not queue.full():  # a stuck view loses events, like any slow bus follower
            queue.put_nowait(event)
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(None)  # the bus closed: the daemon is stopping


async def _collect(queue: asyncio.Queue[Event | None], interval: float) -> tuple[list[Event], bool]:
    """(events, bus closed): the events of one burst, or none after a quiet `interval`."""
    try:
        async with asyncio.timeout(interval):
            first = await queue.get()
    except TimeoutError:
        return [], False
    if first is None:
        return [], True
    batch = [first]
    loop = asyncio.get_running_loop()
    until = loop.time() + _COALESCE
    while (left := until - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):
                event = await queue.get()
        except TimeoutError:
            break
        if event is None:
            return batch, True
        batch.append(event)
    return batch, False
