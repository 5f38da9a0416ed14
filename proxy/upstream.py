"""Connections to backends: keep-alive pooled, flow-controlled, tunnel-capable.

An `UpstreamConnection` carries one exchange at a time. Response bytes go to the exchange's
response parser (the exchange itself is the parser's callback object); after a 101 they are
copied raw to the client (`tunnel`). Idle connections sit in their backend's list and leave it
as soon as the backend closes them, so a stale one is rarely picked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, cast

import httptools

from . import fastpath

if TYPE_CHECKING:
    from .exchange import Exchange
    from .pool import Backend

log = logging.getLogger(__name__)


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.tunnel: asyncio.Transport | None = None  # client transport once upgraded
        self.idle_since = 0.0
        self.closed = False
        self.read_paused = False
        self.write_blocked = False
        self.eof_seen = False  # the backend half-closed a tunnel

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it. (Both loops
        # already set TCP_NODELAY.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        ex = self.ex
        if ex is None:  # bytes on an idle connection: the backend is confused, drop it
            log.debug(
                "unexpected %d bytes from idle connection to %s", len(data), self.backend.addr
            )
            self.close()
            return
        if not ex.got_response_bytes:
            ex.got_response_bytes = True
            if ex.simple_ok:
                simple = fastpath.simple_response(data)
                if simple is not None:
                    ex.simple_response(data, simple[0], simple[1])
                    return
        ex.last_upstream = ex.client.ctx.now
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpResponseParser(ex)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.upstream_upgraded(self, data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.error("internal error relaying from %s", self.backend.addr, exc_info=exc)
            ex.flush()
            ex.upstream_broken(self, f"bad response from {self.backend.addr}: {exc}")
            return
        ex.flush()

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        ex = self.ex
        if tunnel is None or ex is None or ex.client.eof_seen or not tunnel.can_write_eof():
            return False  # closes; connection_lost ends the tunnel (and the client side)
        # Half-close travels through the tunnel; the client may still be sending.
        self.eof_seen = True
        tunnel.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.upstream_lost(self, exc)
        else:
            self.backend.discard(self)

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.ex is not None:
            self.ex.upstream_write_blocked(True)

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.ex is not None:
            self.ex.upstream_write_blocked(False)

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
        self.ex = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Close now, discarding unsent data (the exchange on it is abandoned)."""
        self.ex = None
        if self.transport is not None and not self.closed:
            self.transport.abort()


async def connect(backend: Backend, timeout: float) -> UpstreamConnection:
    """A fresh connection to `backend`; raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(
            functools.partial(UpstreamConnection, backend), backend.host, backend.port
        )
    return proto
