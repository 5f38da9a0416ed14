"""The client side: an asyncio.Protocol parsing HTTP/1.1 with httptools (the fast path).

Each request becomes an `Exchange`. Pipelined requests queue behind the active one and are
answered in order. After a 101 the connection becomes a raw byte tunnel to the backend.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from . import fastpath, headers, request
from .context import CLIENT_IDLE_TIMEOUT, Context
from .errors import BadRequest, ProxyError
from .exchange import PAUSE_PIPELINE, Exchange
from .request import RequestFields, RequestHead
from .tunnel import Tunnel

log = logging.getLogger(__name__)

LINGER = 2.0  # seconds to keep reading (and discarding) after answering an unread request


class ClientConnection(asyncio.Protocol):
    """One downstream connection."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.trusted = False
        self.local_host = b"localhost"
        self.fields: RequestFields | None = None  # the head being parsed
        self.ex: Exchange | None = None  # the request whose body is being parsed
        self.active: Exchange | None = None  # being answered
        self.queue: deque[Exchange] = deque()
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.closing = False  # no new requests; close when the active one is answered
        self.discarding = False  # answered early: swallow the rest of the request, then close
        self.tunnel: Tunnel | None = None
        self.upgrading: Exchange | None = None
        self.last_activity = 0.0
        self.header_bytes = 0
        self._fwd_host: bytes | None = None
        self._fwd_block = b""

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self.trusted = headers.is_trusted(self.peer, ctx.trusted)
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            host = f"[{local[0]}]" if ":" in str(local[0]) else str(local[0])
            self.local_host = f"{host}:{local[1]}".encode()
        self.last_activity = ctx.now
        ctx.clients.add(self)
        ctx.connections_total += 1
        if ctx.stopping:
            self.closing = True
            transport.close()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.backend.write(data)
            return
        if self.upgrading is not None:
            self.upgrading.early_data(data)
            return
        self.last_activity = self.ctx.now
        if (
            self.fields is None
            and self.ex is None
            and self.active is None
            and not self.closing
            and len(data) <= self.ctx.max_header
        ):
            simple = fastpath.simple_request(data)
            if simple is not None:
                self._simple_request(*simple)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, ProxyError):
                log.error("internal error handling a request from %s", self.peer, exc_info=cause)
                cause = ProxyError("internal proxy error", 500)
            self._parse_failed(cause)
        except httptools.HttpParserError as exc:
            self._parse_failed(BadRequest(f"malformed request: {exc}"))

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        if tunnel is not None:
            # Half-close travels through the tunnel; the backend may still be sending.
            return tunnel.client_sent_eof()
        # Like nginx (proxy_ignore_client_abort off): a client that stops sending while its
        # request is under way has gone; the backend request is abandoned and released.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.client_gone(self)
        active = self.active
        if active is not None:
            if active.tunnel is not None:
                active.end_tunnel()
            active.abort()
        for ex in self.queue:
            ex.abort()
        self.queue.clear()
        if self.ex is not None:
            self.ex.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None:
            self.active.client_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.active.client_writable(True)

    # --- request parsing (httptools callbacks) ------------------------------------------------
    def on_message_begin(self) -> None:
        self.fields = RequestFields()
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        fields = self.fields
        assert fields is not None
        fields.target += url
        self.header_bytes += len(url)
        if self.header_bytes > self.ctx.max_header:
            raise BadRequest("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self.fields
        assert fields is not None
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.ctx.max_header:
            raise BadRequest(f"request headers larger than {self.ctx.max_header} bytes", 431)
        code = headers.REQUEST_SPECIAL.get(name.lower())
        if code is None:
            fields.lines.append(name + b": " + value + b"\r\n")
        elif code == headers.HOST:
            if fields.host is not None:
                raise BadRequest("more than one Host header")
            fields.host = value
            fields.lines.append(name + b": " + value + b"\r\n")
        elif code == headers.CONTENT_LENGTH:
            fields.content_length = value
        elif code == headers.TRANSFER_ENCODING:
            fields.transfer_encoding = value
        elif code == headers.CONNECTION:
            c = fields.connection
            fields.connection = value if c is None else c + b"," + value
        elif code == headers.UPGRADE:
            fields.upgrade_value = value
        elif code == headers.EXPECT:
            fields.lines.append(name + b": " + value + b"\r\n")
        elif code == headers.XFF:
            fields.xff = value if fields.xff is None else fields.xff + b", " + value
        elif code == headers.XFP:
            fields.xfp = value
        elif code == headers.XFH:
            fields.xfh = value
        elif code == headers.FORWARDED:
            f = fields.forwarded
            fields.forwarded = value if f is None else f + b", " + value
        # DROP: hop-by-hop, not forwarded

    def on_headers_complete(self) -> None:
        fields = self.fields
        assert fields is not None
        self.fields = None
        parser = self.parser
        fields.method = parser.get_method()
        fields.http10 = parser.get_http_version() == "1.0"
        fields.keep_alive = parser.should_keep_alive() and not self.closing
        fields.upgrade = parser.should_upgrade()
        try:
            head = request.prepare(
                fields,
                router=self.ctx.router,
                max_body=self.ctx.max_body,
                local_host=self.local_host,
                forwarded=self.forwarded,
            )
            ex = Exchange(self, head)
        except ProxyError as err:
            ex = Exchange(self, RequestHead.rejected(fields), err)
        self.ex = ex
        if self.discarding or (self.closing and self.active is not None):
            ex.done = True  # no new work on a closing connection; its body is ignored
            return
        self._enqueue(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.body(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        self.ex = None
        if ex is not None:
            ex.request_done()
        if self.discarding and self.active is None and self.transport is not None:
            self.transport.close()

    def _simple_request(self, method: bytes, target: bytes, block: bytes, host: bytes) -> None:
        # A whole bodiless request in one read (fastpath.simple_request): no parser callbacks.
        path, _, _ = target.partition(b"?")
        route = self.ctx.router.lookup(host, path)
        if route is None:
            fields = RequestFields()
            fields.method, fields.target = method, target
            ex = Exchange(self, RequestHead.rejected(fields), request.no_route(host, path))
        else:
            head = request.prepare_simple(
                method, target, block, host, route, self.forwarded(None, host)
            )
            ex = Exchange(self, head)
        ex.req_done = True
        self.active = ex
        ex.start()

    def forwarded(self, fields: RequestFields | None, host: bytes | None) -> bytes:
        """X-Forwarded-* and Forwarded lines for a request (cached per connection when possible)."""
        if self.trusted:
            return headers.forwarded_block(
                self.peer,
                host,
                b"http",
                trusted=True,
                xff=fields.xff if fields else None,
                xfp=fields.xfp if fields else None,
                xfh=fields.xfh if fields else None,
                forwarded=fields.forwarded if fields else None,
            )
        if host != self._fwd_host or not self._fwd_block:
            self._fwd_host = host
            self._fwd_block = headers.forwarded_block(self.peer, host, b"http", trusted=False)
        return self._fwd_block

    # --- request lifecycle -------------------------------------------------------------------
    def _enqueue(self, ex: Exchange) -> None:
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.set_paused(PAUSE_PIPELINE, True)

    def exchange_finished(self, ex: Exchange, *, close: bool, abort: bool = False) -> None:
        """`ex` is answered; start the next pipelined request or close."""
        if ex is not self.active:
            return
        self.active = None
        self.last_activity = self.ctx.now
        transport = self.transport
        if transport is None or self.closed:
            return
        if abort:
            transport.abort()
            return
        if close or self.closing:
            self.closing = True
            if ex.req_done or ex.tunnel is not None or self.tunnel is not None:
                transport.close()
            else:
                self._linger()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self.set_paused(PAUSE_PIPELINE, False)
            self.active = nxt
            nxt.start()

    def _linger(self) -> None:
        # Closing while the client is still sending would reset the connection and could
        # destroy the answer before it is read; swallow the rest of the request first.
        self.discarding = True
        for ex in self.queue:
            ex.abort()
        self.queue.clear()
        self.set_paused(~0, False)
        asyncio.get_running_loop().call_later(LINGER, self.close)

    def _parse_failed(self, err: ProxyError) -> None:
        self.closing = True
        ex = self.ex
        self.ex = None
        fields = self.fields
        self.fields = None
        if ex is not None and ex.error is None:
            # Headers were fine and the request is under way; its body was not.
            ex.req_done = True
            if ex is self.active:
                ex.client_broken(err)
            else:
                ex.error = err  # queued: answered in its turn
        else:
            if ex is None:
                ex = Exchange(self, RequestHead.rejected(fields), err)
            ex.error = err
            ex.req_done = True
            if ex is not self.active and ex not in self.queue:
                self._enqueue(ex)
        if self.active is None and not self.queue:
            self.close()

    def _upgrade_requested(self, extra: bytes) -> None:
        active = self.active
        ex = active if active is not None and active.head.upgrade else None
        if ex is None or ex.done or ex.error is not None:
            self.closing = True  # a rejected upgrade: nothing more on this connection
            return
        self.upgrading = ex
        if extra:
            ex.early_data(extra)

    def start_tunnel(self, tunnel: Tunnel) -> None:
        """The backend accepted the upgrade: copy bytes both ways from now on."""
        self.upgrading = None
        self.tunnel = tunnel

    # --- output and flow control ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def set_paused(self, reason: int, on: bool) -> None:
        """Pause reading from the client while any reason holds."""
        old = self.paused
        new = old | reason if on else old & ~reason
        if new == old:
            return
        self.paused = new
        transport = self.transport
        if transport is None or self.closed:
            return
        if not old:
            transport.pause_reading()
        elif not new:
            transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # --- the server's side (context.Connection) --------------------------------------------------
    def sweep(self, now: float) -> None:
        """Enforce timeouts (called about once a second by the server's sweeper)."""
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.read_timed_out(now)
        elif self._idle_for(now) > CLIENT_IDLE_TIMEOUT:
            self.close()

    def _idle_for(self, now: float) -> float:
        """Seconds without progress from the client, 0 when an answer is under way."""
        if self.tunnel is not None or self.upgrading is not None:
            return 0.0
        active = self.active
        if active is not None and (active.req_done or active.error is not None):
            return 0.0
        return now - self.last_activity

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else once the request under way is done."""
        if self.active is None and self.ex is None and self.fields is None and self.tunnel is None:
            self.close()
        else:
            self.closing = True

    def abort(self) -> None:
        """Close at once, discarding anything unsent."""
        if self.transport is not None:
            self.transport.abort()
