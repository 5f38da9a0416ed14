"""Connections to backends: keep-alive pooled, flow-controlled, tunnel-capable.

An `UpstreamConnection` carries one exchange at a time, its `handler`, which gets the
response bytes; after a 101 they are copied raw to the client through the `tunnel`. Idle
connections sit in their backend's list and leave it as soon as the backend closes them, so a
stale one is rarely picked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Protocol, cast

from .tunnel import Tunnel

if TYPE_CHECKING:
    from .backend import Backend
    from .context import Context

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What a connection reports to the exchange it carries (exchange.Exchange)."""

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None: ...
    def upstream_write_blocked(self, blocked: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend."""

    def __init__(self, backend: Backend, ctx: Context) -> None:
        self.backend = backend
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.handler: Handler | None = None
        self.tunnel: Tunnel | None = None  # set once upgraded
        self.idle_since = 0.0
        self.closed = False
        self.read_paused = False
        self.write_blocked = False

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it. (Both loops
        # already set TCP_NODELAY.)
        self.transport = cast(asyncio.Transport, transport)
        self.ctx.upstream_open += 1

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.client.write(data)
            return
        handler = self.handler
        if handler is None:  # bytes on an idle connection: the backend is confused, drop it
            log.debug(
                "unexpected %d bytes from idle connection to %s", len(data), self.backend.addr
            )
            self.close()
            return
        handler.upstream_data(self, data)

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        if tunnel is None or self.handler is None:
            return False  # closes; connection_lost ends the tunnel (and the client side)
        # Half-close travels through the tunnel; the client may still be sending.
        return tunnel.backend_sent_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.upstream_open -= 1
        self.transport = None  # it refers back to this protocol: no cycle left to collect
        self.tunnel = None
        handler = self.handler
        if handler is not None:
            self.handler = None
            handler.upstream_lost(self, exc)
        else:
            self.backend.discard(self)

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.handler is not None:
            self.handler.upstream_write_blocked(True)

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.handler is not None:
            self.handler.upstream_write_blocked(False)

    # --- used by the exchange / pool -------------------------------------------------------------
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def pause_reading(self, paused: bool) -> None:
        if paused != self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """Close gracefully (flushing what was written)."""
        self.handler = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Close now, discarding unsent data (the exchange on it is abandoned)."""
        self.handler = None
        if self.transport is not None and not self.closed:
            self.transport.abort()


async def connect(backend: Backend, ctx: Context) -> UpstreamConnection:
    """A fresh connection to `backend`; raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(ctx.connect_timeout):
        _, proto = await loop.create_connection(
            functools.partial(UpstreamConnection, backend, ctx), backend.host, backend.port
        )
    return proto
