"""The client side: an asyncio.Protocol in front of the request reader (reader.py).

Each request becomes an `Exchange`. Pipelined requests queue behind the active one and are
answered in order; at most PIPELINE_DEPTH of them, then the reader keeps the rest of what
the client sent unparsed and the socket is not read until the queue shrinks. After a 101 the
connection becomes a raw byte tunnel to the backend. The client's deadlines (header, body,
send, idle) are enforced here, from the server's sweeper.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import cast

from . import fastpath, headers, request
from .context import CLIENT_IDLE_TIMEOUT, Context
from .errors import ClientTimeout, ProxyError
from .exchange import PAUSE_PIPELINE, Exchange
from .reader import RequestReader
from .request import RequestFields, RequestHead
from .tunnel import Tunnel

log = logging.getLogger(__name__)

LINGER = 2.0  # seconds to keep reading (and discarding) after answering an unread request
# Parsed requests one connection may queue behind the one being answered. They are answered
# one after another anyway, so parsing further ahead would only hold memory.
PIPELINE_DEPTH = 8
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class ClientConnection(asyncio.Protocol):
    """One downstream connection."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self, ctx.max_header, ctx.now)
        self.peer = ""
        self.trusted = False
        self.local_host = b"localhost"
        self.active: Exchange | None = None  # being answered
        self.queue: deque[Exchange] = deque()
        self.pipeline_full = False  # len(queue) >= PIPELINE_DEPTH (read by the reader)
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.closing = False  # no new requests; close when the active one is answered
        self.discarding = False  # answered early: swallow the rest of the request, then close
        self.tunnel: Tunnel | None = None
        self.upgrading: Exchange | None = None
        self.last_activity = 0.0  # the last read from the client
        self.write_paused_since = 0.0
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
        ctx.client_added(self)
        if ctx.stopping:
            # Taken from the backlog at stop: its request is answered, then it closes.
            self.closing = True

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.backend.write(data)
            return
        if self.upgrading is not None:
            self.upgrading.early_data(data)
            return
        now = self.last_activity = self.ctx.now
        reader = self.reader
        if (
            self.active is None
            and reader.idle
            and not self.closing
            and len(data) <= self.ctx.max_header
        ):
            simple = fastpath.simple_request(data)
            if simple is not None:
                reader.head_since = 0.0  # a whole head: its deadline is met
                self._simple_request(*simple)
                return
        reader.feed(data, now)

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
        active, queue = self.active, self.queue
        ex, _ = self.reader.stop()
        # The parser and the transport refer back to this connection: without dropping them,
        # every closed connection would wait for the cyclic garbage collector (and hold its
        # memory until it runs).
        self.reader.close()
        self.transport = None
        self.active = self.upgrading = None
        self.tunnel = None
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

    # --- what the reader reports (reader.Owner) ------------------------------------------------
    def request_parsed(self, fields: RequestFields) -> Exchange:
        """A request head arrived: its exchange (answered in turn; its body goes to it)."""
        fields.keep_alive = fields.keep_alive and not self.closing
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
        if self.discarding or (self.closing and self.active is not None):
            ex.done = True  # no new work on a closing connection; its body is ignored
        else:
            self._enqueue(ex)
        return ex

    def request_ended(self) -> None:
        if self.discarding and self.active is None and self.transport is not None:
            self.transport.close()

    def hold_input(self, on: bool) -> None:
        if on:
            self.set_paused(PAUSE_PIPELINE, True)
        elif not self.queue:
            self.set_paused(PAUSE_PIPELINE, False)

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
            self.pipeline_full = len(self.queue) >= PIPELINE_DEPTH
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
            self.pipeline_full = False
            self.active = nxt
            if self.reader.holding:
                # Room in the pipeline again; parsed on the next turn of the loop, since this
                # may run inside a parser callback.
                asyncio.get_running_loop().call_soon(self._resume_reading)
            elif not self.queue:
                self.set_paused(PAUSE_PIPELINE, False)
            nxt.start()

    def _resume_reading(self) -> None:
        if not self.closed:
            self.reader.resume(self.ctx.now)

    def _linger(self) -> None:
        # Closing while the client is still sending would reset the connection and could
        # destroy the answer before it is read; swallow the rest of the request first.
        self.discarding = True
        for ex in self.queue:
            ex.abort()
        self.queue.clear()
        self.pipeline_full = False
        self.set_paused(~0, False)
        asyncio.get_running_loop().call_later(LINGER, self.close)

    def parse_failed(self, err: ProxyError) -> None:
        """The request stream is broken (malformed, too large, too slow): answer and close."""
        self.closing = True
        ex, fields = self.reader.stop()
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

    def upgrade_requested(self, extra: bytes) -> None:
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
            # The client's deadlines did not run while it was not read: they start afresh.
            now = self.last_activity = self.ctx.now
            if self.reader.head_since:
                self.reader.head_since = now

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
        reader = self.reader
        if self.paused or reader.failed or self.tunnel is not None or self.upgrading is not None:
            return  # the proxy is not reading from this client: its deadlines wait
        if reader.ex is not None:
            if now - self.last_activity > ctx.body_timeout:
                ctx.count_client_timeout("body")
                self.parse_failed(ClientTimeout(f"request body stalled for {ctx.body_timeout:g}s"))
        elif reader.head_since:
            if now - reader.head_since > ctx.header_timeout:
                ctx.count_client_timeout("header")
                if not reader.head_started:
                    self.close()  # not one byte of a request: nothing to answer
                else:
                    self.parse_failed(
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

    def last_request(self) -> None:
        """The server is stopping: answer what comes next with `Connection: close`."""
        self.closing = True

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else once the request under way is done."""
        if self.active is None and self.reader.idle and self.tunnel is None:
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
