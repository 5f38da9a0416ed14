"""The client side: an asyncio.Protocol parsing HTTP/1.1 with httptools (the fast path).

Each request becomes an `Exchange`. Pipelined requests queue behind the active one and are
answered in order; at most PIPELINE_DEPTH of them, then the rest of what the client sent is
kept unparsed (at most one read) and the socket is not read until the queue shrinks. To make
that possible the parser is fed one message head at a time (`_feed`). After a 101 the
connection becomes a raw byte tunnel to the backend.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from collections import deque
from typing import cast

import httptools

from . import fastpath, headers, request
from .context import CLIENT_IDLE_TIMEOUT, Context
from .errors import BadRequest, ClientTimeout, ProxyError
from .exchange import PAUSE_PIPELINE, Exchange
from .framing import LENGTH
from .request import RequestFields, RequestHead
from .tunnel import Tunnel

log = logging.getLogger(__name__)

LINGER = 2.0  # seconds to keep reading (and discarding) after answering an unread request
# Parsed requests one connection may queue behind the one being answered. They are answered
# one after another anyway, so parsing further ahead would only hold memory.
PIPELINE_DEPTH = 8

# RFC 9110 §9.1: a method is a token, and the set is extensible. llhttp knows a fixed list, so
# any other token is parsed as a POST (its framing rules are the same for every method but
# CONNECT) and forwarded under its own name.
_NATIVE_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"CONNECT"}
)
_NATIVE_STARTS = tuple(m + b" " for m in _NATIVE_METHODS)
_METHOD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) ")
_END = b"\r\n\r\n"
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class ClientConnection(asyncio.Protocol):
    """One downstream connection."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
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
        self.last_activity = 0.0  # the last read from the client
        self.head_since = 0.0  # when the request head being received began (0: none)
        self.write_paused_since = 0.0
        self.header_bytes = 0
        self.failed = False  # the request stream is broken: nothing more is parsed
        self._method: bytes | None = None  # an extension method, parsed as a POST
        self._body_left = 0  # Content-Length bytes still to come for the message being parsed
        self._tail = 0  # bytes of a CRLFCRLF the last piece ended with (0-3)
        self._carry = b""  # the start of a request line whose method is not complete yet
        self._unparsed = b""  # input kept back while the pipeline is full, from _unparsed_at
        self._unparsed_at = 0
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
        self.last_activity = self.head_since = ctx.now  # the first head is due from now on
        ctx.client_added(self)
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
        if self._unparsed:  # a read that was under way when reading was paused
            self._unparsed = self._unparsed[self._unparsed_at :] + data
            self._unparsed_at = 0
            return
        if self._carry:
            data = self._carry + data
            self._carry = b""
        elif (
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
        self._feed(data)

    def _feed(self, data: bytes, pos: int = 0) -> None:
        """Parse `data` from `pos`, in pieces that end where a message head or body ends.

        Message boundaries are where the pipeline may stop (the rest is kept, unparsed, in
        `_unparsed`) and where a request line starts (an extension method is rewritten).
        """
        parser = self.parser
        if parser is None:
            return  # closed
        end = len(data)
        view: memoryview | None = None
        while pos < end and not self.failed:
            skip = 0  # bytes of `data` the piece's first `len(prefix)` bytes stand for
            prefix = b""
            if self.fields is None and self.ex is None:  # at a message boundary
                if self.queue and len(self.queue) >= PIPELINE_DEPTH:
                    self._unparsed, self._unparsed_at = data, pos
                    self.set_paused(PAUSE_PIPELINE, True)
                    return
                if not self.head_since:
                    self.head_since = self.ctx.now
                if not data.startswith(_NATIVE_STARTS, pos):
                    # Only unusual starts are looked at: an extension method, a partial one.
                    skip = self._extension_method(data, pos)
                    if skip < 0:
                        self._carry = data[pos:]  # the method has not fully arrived yet
                        return
                    if skip:
                        prefix = b"POST"
            left = self._body_left
            cut = (
                (pos + left if pos + left < end else end)
                if left
                else self._head_end(data, pos, end)
            )
            if prefix:
                piece: bytes | memoryview = prefix + data[pos + skip : cut]
            elif pos == 0 and cut == end:
                piece = data
            else:
                if view is None:
                    view = memoryview(data)
                piece = view[pos:cut]
            try:
                parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                at = exc.args[0]
                self._upgrade_requested(data[pos + skip + at - len(prefix) :])
                return
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if not isinstance(cause, ProxyError):
                    log.error(
                        "internal error handling a request from %s", self.peer, exc_info=cause
                    )
                    cause = ProxyError("internal proxy error", 500)
                self._parse_failed(cause)
                return
            except httptools.HttpParserError as exc:
                self._parse_failed(BadRequest(f"malformed request: {exc}"))
                return
            pos = cut

    def _head_end(self, data: bytes, pos: int, end: int) -> int:
        """Where the next piece to feed ends: after the next CRLFCRLF (or at `end`)."""
        tail = self._tail
        if tail:
            # The previous piece ended inside a CRLFCRLF: it may end right here.
            rest = 4 - tail
            if data[pos : pos + rest] == _END[tail:]:
                self._tail = 0
                return pos + rest
        i = data.find(_END, pos, end)
        if i >= 0:
            self._tail = 0
            return i + 4
        self._tail = (
            3
            if data.endswith(b"\r\n\r")
            else 2
            if data.endswith(b"\r\n")
            else 1
            if data.endswith(b"\r")
            else 0
        )
        return end

    def _extension_method(self, data: bytes, pos: int) -> int:
        """Length of the method + preceding empty lines at `pos` if it is an extension method.

        0 when the parser can read the request line as it is (a method it knows, or
        something that is not a token at all, which it answers with 400); -1 when the method
        has not fully arrived yet. An extension method is kept in `_method`.
        """
        start = pos
        while data.startswith(b"\r\n", start):  # empty lines before a request are ignored
            start += 2
        m = _METHOD.match(data, start)
        if m is None:
            incomplete = len(data) - start < 33 and data.find(b" ", start) < 0
            return -1 if incomplete else 0
        method = m.group(1)
        if method in _NATIVE_METHODS:
            return 0
        self._method = method
        return m.end(1) - pos

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
        active, queue, ex = self.active, self.queue, self.ex
        # The parser and the transport refer back to this connection: without dropping them,
        # every closed connection would wait for the cyclic garbage collector (and hold its
        # memory until it runs).
        self.parser = None
        self.transport = None
        self.active = self.ex = self.upgrading = None
        self.tunnel = None
        self._unparsed = self._carry = b""
        if active is not None:
            if active.tunnel is not None:
                active.end_tunnel()
            active.abort()
        for queued in queue:
            queued.abort()
        queue.clear()
        if ex is not None:
            ex.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.ctx.now
        if self.active is not None:
            self.active.client_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_paused_since = 0.0
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
        self.head_since = 0.0
        parser = self.parser
        assert parser is not None
        method = self._method
        if method is not None:
            self._method = None
            fields.method = method
        else:
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
        if ex.head.body == LENGTH and fields.content_length is not None:
            self._body_left = int(fields.content_length)
        if self.discarding or (self.closing and self.active is not None):
            ex.done = True  # no new work on a closing connection; its body is ignored
            return
        self._enqueue(ex)

    def on_body(self, body: bytes) -> None:
        if self._body_left:
            self._body_left -= len(body)
        ex = self.ex
        if ex is not None:
            ex.body(body)

    def on_message_complete(self) -> None:
        self._body_left = 0
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
            self.reset()
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
            self.active = nxt
            if self._unparsed:
                # Room in the pipeline again; parsed on the next turn of the loop, since this
                # may run inside a parser callback.
                asyncio.get_running_loop().call_soon(self._parse_unparsed)
            elif not self.queue:
                self.set_paused(PAUSE_PIPELINE, False)
            nxt.start()

    def _parse_unparsed(self) -> None:
        data = self._unparsed
        if not data or self.closed or len(self.queue) >= PIPELINE_DEPTH:
            return
        self._unparsed = b""
        self._feed(data, self._unparsed_at)
        if not self._unparsed and not self.queue:
            self.set_paused(PAUSE_PIPELINE, False)

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
        self.failed = self.closing = True
        self._unparsed = self._carry = b""
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
        """Enforce the timeouts (called about once a second by the server's sweeper)."""
        ctx = self.ctx
        if self.write_paused_since and now - self.write_paused_since > ctx.send_timeout:
            self._stopped_reading()
            return
        ex = self.active
        if ex is not None and ex.conn is not None and ex.read_timed_out(now):
            return
        if self.paused or self.failed or self.tunnel is not None or self.upgrading is not None:
            return  # the proxy is not reading from this client: its deadlines wait
        if self.ex is not None:
            if now - self.last_activity > ctx.body_timeout:
                ctx.count_client_timeout("body")
                self._parse_failed(ClientTimeout(f"request body stalled for {ctx.body_timeout:g}s"))
        elif self.head_since:
            if now - self.head_since > ctx.header_timeout:
                ctx.count_client_timeout("header")
                if self.fields is None and not self._carry:
                    self.close()  # not one byte of a request: nothing to answer
                else:
                    self._parse_failed(
                        ClientTimeout(f"request head not received within {ctx.header_timeout:g}s")
                    )
        elif self._idle_for(now) > CLIENT_IDLE_TIMEOUT:
            self.close()

    def _stopped_reading(self) -> None:
        # The client's fault: its backend is released without a failure, and the cut is a
        # reset, so that a response delimited by the connection's end never looks complete.
        ctx = self.ctx
        ctx.count_client_timeout("send")
        what = self.active.describe() if self.active is not None else "no request"
        log.info(
            "client %s stopped reading for %gs: connection reset (%s)",
            self.peer,
            ctx.send_timeout,
            what,
        )
        self.reset()

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

    def reset(self) -> None:
        """Close at once with a TCP reset: the client cannot mistake a cut for an end."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass  # closing already
        transport.abort()
