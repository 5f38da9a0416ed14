"""`GET /v1/stats?follow=1`: the stats snapshot every tick, and at once after any event (SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from aiohttp import web

from ..events import Event, EventBus
from ..stats import StatsFeed

# After an event, wait this long for the rest of its burst (a scale to 10 is ~30 events) so
# views get one fresh snapshot, not thirty.
_COALESCE = 0.05
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
    # An async generator (declared as an iterator): closed here, so it leaves the bus at once.
    follower = cast(AsyncGenerator[Event, None], events.follow())
    try:
        for event in events.recent(history):
            await response.write(frame("event", event.to_json()))
        await response.write(frame("stats", feed.snapshot()))
        async for batch in _batches(follower, interval):
            for event in batch:
                await response.write(frame("event", event.to_json()))
            # Fresh after events (the view must show what just happened), shared on plain ticks.
            await response.write(frame("stats", feed.snapshot(0.0) if batch else feed.snapshot()))
    except ConnectionResetError:
        pass  # the view went away
    finally:
        await follower.aclose()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _next(follower: AsyncIterator[Event]) -> Event:
    return await anext(follower)


async def _batches(follower: AsyncIterator[Event], interval: float) -> AsyncIterator[list[Event]]:
    """Lists of events as they come (coalesced), and an empty list on each quiet tick."""
    pending: asyncio.Task[Event] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(follower))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield []
                continue
            batch: list[Event] = []
            try:
                batch.append(pending.result())
                pending = None
                loop = asyncio.get_running_loop()
                until = loop.time() + _COALESCE
                while (left := until - loop.time()) > 0:
                    pending = asyncio.ensure_future(_next(follower))
                    done, _ = await asyncio.wait({pending}, timeout=left)
                    if not done:
                        break
                    batch.append(pending.result())
                    pending = None
            except StopAsyncIteration:
                if batch:
                    yield batch
                return
            yield batch
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
