"""An aiohttp application on a TCP address (the dashboard's and /metrics' listeners), bounded.

These listeners run in the daemon's process, so whatever a client makes them hold (descriptors,
memory, time) is taken from supervision: anyone who can reach the port may be hostile, and the
dashboard's token is only checked once a request's head has arrived. So each listener holds at
most `MAX_CONNECTIONS` connections and, at the cap, stops accepting as the proxy does
(proxy/listener.py: the port stays bound, the kernel queues new clients in the backlog, which
costs the daemon no descriptor); a request head must arrive whole within `HEADER_TIMEOUT` of
the connection opening or of the previous response (a slowloris that trickles a byte at a time
is closed then: aiohttp's own keep-alive timer is not a head deadline in every release we
accept); a client that stops reading a response is closed after `SEND_TIMEOUT` (else its
connection, and the handler writing to it, would be held for good); an idle keep-alive
connection is closed after `IDLE_TIMEOUT`; and heads and bodies have small size limits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from config.render import format_address
from proxy.listener import Listener

from .errors import SupervisorError

log = logging.getLogger(__name__)

# A Prometheus server scrapes over one or two connections and a dashboard tab holds a few
# (its page, the stats stream, a log follower): 64 is plenty, and 64 descriptors per listener
# leave the daemon's limit to the proxy and supervision.
MAX_CONNECTIONS = 64
HEADER_TIMEOUT = 10.0  # seconds for a whole request head (nginx's client_header_timeout: 60)
IDLE_TIMEOUT = 15.0  # seconds an idle keep-alive connection is kept (Prometheus scrapes at 15 s+)
SEND_TIMEOUT = 30.0  # seconds a client may leave our send buffer full (nginx's send_timeout: 60)
# Pass as the Application's client_max_size: the dashboard's JSON bodies are a few bytes.
MAX_BODY = 64 * 1024
MAX_LINE = 8190  # request line and each header line (aiohttp's default, nginx's 8 KB)
MAX_HEADERS = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TcpSite:
    """One aiohttp application on one listen address, with the limits above."""

    def __init__(
        self,
        app: web.Application,
        what: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self._app = app
        self._what = what  # "metrics", "dashboard": for messages
        self._max = max_connections
        self._resume_at = max_connections * 3 // 4  # accept again below this: no flapping
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self._connections: dict[RequestHandler, _Connection] = {}
        self.pauses = 0  # times the cap was reached
        app.middlewares.insert(0, self._head_arrived)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def open(self, listen: tuple[str, int], source: str) -> tuple[str, int]:
        """Start serving on `listen`; the bound address (port 0 resolved).

        `source` says where `listen` was set ("[metrics] listen in /etc/corral.toml"): a host
        that does not resolve or a taken port fails with one line naming it and the reason."""
        self._runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self._idle_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
        )
        await self._runner.setup()
        self._listener = Listener(self._accept)
        try:
            bound = await self._listener.open((listen,))
        except OSError as exc:
            await self.close()
            raise SupervisorError(
                f"{self._what} cannot listen on {format_address(listen)} ({source}): "
                f"{_reason(listen[0], exc)}"
            ) from exc
        return bound[0]

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- connections ---------------------------------------------------------------------------

    def _accept(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        return _Connection(self, self._runner.server(), self._header_timeout, self._send_timeout)

    def _opened(self, conn: _Connection) -> None:
        self._connections[conn.inner] = conn
        if len(self._connections) >= self._max and self._listener is not None:
            if self._listener.accepting:
                self.pauses += 1
                log.warning(
                    "%s listener: %d connections open (its cap); not accepting until some close",
                    self._what,
                    len(self._connections),
                )
            self._listener.accept(False)

    def _closed(self, conn: _Connection) -> None:
        self._connections.pop(conn.inner, None)
        listener = self._listener
        if listener is not None and not listener.accepting and self.connections <= self._resume_at:
            listener.accept(True)

    @web.middleware
    async def _head_arrived(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A whole head is in: no deadline while it is handled; the next head has its own."""
        conn = self._connections.get(request.protocol)
        if conn is None:  # its connection is closing
            return await handler(request)
        conn.handling()
        try:
            return await handler(request)
        finally:
            conn.handled()


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted, with a deadline for each request head."""

    def __init__(
        self, site: TcpSite, inner: RequestHandler, header_timeout: float, send_timeout: float
    ) -> None:
        self._site = site
        self.inner = inner
        self._header_timeout = header_timeout
        self._send_timeout = send_timeout
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None  # for the next request head
        self._stalled: asyncio.TimerHandle | None = None  # while the client reads nothing
        self._busy = 0  # requests being handled (aiohttp handles one at a time; pipelined wait)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._site._opened(self)
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # close the transport (aiohttp's answer too)

    def pause_writing(self) -> None:
        # Our send buffer is full: the client has that long to start reading again.
        loop = asyncio.get_running_loop()
        self._stalled = loop.call_later(self._send_timeout, self._expire)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._transport = None
        try:
            self.inner.connection_lost(exc)
        finally:
            self._site._closed(self)

    def handling(self) -> None:
        """A request's head is in: no deadline while it is handled."""
        self._busy += 1
        self._cancel()

    def handled(self) -> None:
        """Its response is out: the next head must be in within the header timeout."""
        self._busy -= 1
        if not self._busy:
            self._arm()

    def _arm(self) -> None:
        self._cancel()
        if self._transport is not None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._header_timeout, self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = self._stalled = None
        if self._transport is not None and not self._transport.is_closing():
            # A head or a reader that did not come in time; nothing of ours is left to send.
            self._transport.abort()


def _reason(host: str, exc: OSError) -> str:
    """What went wrong binding, in words (asyncio and getaddrinfo wrap it in long sentences)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r} ({exc.strerror})"
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc)
