"""One request and its response: pick a backend, forward, retry, relay, or answer an error.

The exchange owns the request's journey: dispatch, the request body, retries and the ending.
The response's state belongs to its `ResponseRelay` (relay.py), one per attempt; framing and
retry questions are answered by pure functions (framing.py, retry.py); after a 101 the two
connections are joined by a `Tunnel` (tunnel.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from config.model import Balance

from . import errors, fastpath, headers, relay, retry
from .context import PENDING_LIMIT, REPLAY_LIMIT, Context, access_log
from .errors import NoBackend, ProxyError, UpstreamError, UpstreamTimeout
from .framing import CHUNKED
from .pool import WhenEmpty
from .relay import ResponseRelay
from .request import RequestHead
from .tunnel import Tunnel
from .upstream import UpstreamConnection, connect

if TYPE_CHECKING:
    from .backend import Backend
    from .pool import Pool, Ticket

log = logging.getLogger(__name__)

# Reasons a client connection stops reading (a bit each; see Client.set_paused).
PAUSE_BUFFER = 1  # request bytes are waiting for a backend connection
PAUSE_UPSTREAM = 2  # the backend is not taking the request body as fast as it comes
PAUSE_PIPELINE = 4  # requests are queued behind the one being answered


class Client(Protocol):
    """What an exchange needs from its client connection (downstream.ClientConnection)."""

    ctx: Context
    peer: str
    closing: bool
    write_paused: bool

    @property
    def transport(self) -> asyncio.Transport | None: ...
    def write(self, data: bytes) -> None: ...
    def set_paused(self, reason: int, on: bool) -> None: ...
    def start_tunnel(self, tunnel: Tunnel) -> None: ...
    def exchange_finished(self, ex: Exchange, *, close: bool, abort: bool = False) -> None: ...


class Exchange:
    """One proxied request, from its head to the end of its response."""

    # Class attributes are the defaults, so creating an exchange sets only what differs.
    error: ProxyError | None = None  # answered by the proxy itself
    req_done = False  # the whole request arrived from the client
    body_seen = 0
    pending_size = 0
    held: list[bytes] | None = None  # bytes behind an upgrade request (see early_data)
    held_size = 0
    replay: list[bytes] | None = None  # what was sent, kept for a retry (idempotent, small)
    replay_size = 0
    backend: Backend | None = None
    conn: UpstreamConnection | None = None
    task: asyncio.Task[None] | None = None  # waiting for a ready backend
    ticket: tuple[Pool, Ticket] | None = None  # its place in that pool's line
    attempts = 0
    stale_retries = 0
    fresh_only = False  # the next attempt must not take a pooled connection
    reused = False  # the current attempt is on a pooled connection
    sent = False
    started = 0.0
    last_upstream = 0.0
    got_response_bytes = False
    relay: ResponseRelay | None = None  # this attempt's response (slow path only)
    tunnel: Tunnel | None = None
    status = 0  # of the response the client got (logs, route counters)
    bytes_out = 0
    responded = False  # response bytes reached the client (fast path or an error answer)
    done = False
    cold_start: float | None = None  # seconds held for a backend to come (reported, opt-in)

    def __init__(self, client: Client, head: RequestHead, error: ProxyError | None = None) -> None:
        self.client = client
        self.head = head
        if error is not None:
            self.error = error
        elif head.idempotent:
            self.replay = []
        self.pending: list[bytes] = []  # request bytes waiting for a backend connection
        self.tried: list[Backend] = []

    # --- dispatch ------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin forwarding (the client connection calls this when it is this one's turn)."""
        self.started = time.monotonic()
        if self.error is not None:
            self.answer(self.error)
            return
        self._dispatch()

    def _dispatch(self, granted: Backend | None = None) -> None:
        route = self.head.route
        assert route is not None
        pool = route.pool
        key = self._hash_value(pool) if pool.balance is Balance.HASH else None
        b = granted
        if b is None:
            b = pool.pick(key, self.tried)
            if b is None:
                if pool.when_empty is WhenEmpty.FAIL:
                    self.answer(NoBackend(f"no backend in pool {pool.name!r}: {pool.empty_reason}"))
                elif pool.held_full:
                    waiting = f"{pool.max_held} requests are already waiting"
                    self.answer(NoBackend(f"no backend in pool {pool.name!r}: {waiting}"))
                else:
                    self._wait(pool, key)
                return
            b.acquire()
        self.backend = b
        self.attempts += 1
        self.tried.append(b)
        conn = None
        ctx = self.client.ctx
        if not self.fresh_only:
            conn = b.take_idle(time.monotonic(), ctx.idle_timeout)
        if conn is not None:
            assert isinstance(conn, UpstreamConnection)
            self._attach(conn, reused=True)
        else:
            if not ctx.room_for_upstream():
                ctx.shed_idle()  # idle keep-alive connections give way to requests
            # Not cancelled when the client leaves: it notices `done` and closes the connection
            # (cancelling could lose a connection that was established a moment earlier).
            ctx.spawn(self._connect(b))

    def _wait(self, pool: Pool, key: str | None) -> None:
        # Held while an autoscaler starts a backend (up to its cold-start timeout), or queued
        # while backends are on their way; either way served in arrival order. The place in
        # line is taken now, not in the task: every request parsed in this loop iteration
        # must see the ones before it (the `max_held` bound).
        hold = pool.when_empty is WhenEmpty.HOLD
        limit = pool.hold_timeout if hold else self.client.ctx.queue_timeout
        remaining = self.started + limit - time.monotonic()
        if remaining <= 0:
            self._not_granted(pool, hold, limit)
            return
        cold = pool.empty  # nothing to take it, rather than everything busy
        self.ticket = (pool, pool.enqueue(key, self.tried))
        self.task = asyncio.get_running_loop().create_task(
            self._queue(pool, self.ticket[1], remaining, hold, limit, cold)
        )

    async def _queue(
        self, pool: Pool, ticket: Ticket, remaining: float, hold: bool, limit: float, cold: bool
    ) -> None:
        b = await pool.wait_granted(ticket, remaining)
        self.task = self.ticket = None
        if self.done:
            if b is not None:
                b.release()
            return
        if b is not None:
            if cold and pool.cold_start_header:
                self.cold_start = time.monotonic() - self.started
            self._dispatch(b)
        elif ticket.refusal:
            self.answer(NoBackend(f"no backend in pool {pool.name!r}: {ticket.refusal}"))
        else:
            self._not_granted(pool, hold, limit)

    def _not_granted(self, pool: Pool, hold: bool, limit: float) -> None:
        if pool.when_empty is WhenEmpty.FAIL:
            self._dispatch()  # (which answers at once when none can come)
        elif hold and pool.empty:
            self.answer(NoBackend(f"no instance of {pool.name!r} became ready within {limit:g}s"))
        elif pool.limit and not pool.empty:
            self.answer(
                NoBackend(
                    f"every instance of {pool.name!r} is busy (concurrency {pool.limit}) and "
                    f"none had room within {limit:g}s"
                )
            )
        else:
            self.answer(NoBackend(f"no ready backend in pool {pool.name!r}"))

    async def _connect(self, b: Backend) -> None:
        try:
            conn = await connect(b, self.client.ctx)
        except TimeoutError:
            if not self.done:
                self._failed(f"connect to {b.addr} timed out", sent=False)
            return
        except OSError as exc:
            if not self.done:
                self._failed(f"cannot connect to {b.addr}: {exc.strerror or exc}", sent=False)
            return
        if self.done or self.backend is not b:
            conn.close()
            return
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        self.conn = conn
        conn.handler = self
        self.reused = reused
        self.got_response_bytes = False
        self.last_upstream = self.client.ctx.now
        pending = self.pending
        if pending:
            conn.write(b"".join([self.head.data, *pending]))
            for piece in pending:
                self._record(piece)
            pending.clear()
            self.pending_size = 0
            self.client.set_paused(PAUSE_BUFFER, False)
        else:
            conn.write(self.head.data)
        self.sent = True
        if self.client.write_paused:
            conn.pause_reading(True)
        if conn.write_blocked:
            self.client.set_paused(PAUSE_UPSTREAM, True)

    def _record(self, piece: bytes) -> None:
        replay = self.replay
        if replay is not None:
            self.replay_size += len(piece)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None  # too big to keep for a retry
            else:
                replay.append(piece)

    def _hash_value(self, pool: Pool) -> str:
        hk = pool.hash_key
        value: str | None = None
        if hk.source == "header":
            raw = headers.find(self.head.lines, hk.name.lower().encode("latin-1"))
            value = raw.decode("latin-1") if raw is not None else None
        elif hk.source == "cookie":
            value = headers.cookie(self.head.lines, hk.name)
        return value if value is not None else self.client.peer

    # --- the request body (from the client connection's parser) ----------------------------------
    def body(self, data: bytes) -> None:
        if self.done or self.error is not None:
            return
        self.body_seen += len(data)
        max_body = self.client.ctx.max_body
        if max_body and self.body_seen > max_body:
            self.client_broken(errors.BadRequest(f"body larger than {max_body} bytes", 413))
            return
        piece = b"%x\r\n%b\r\n" % (len(data), data) if self.head.body == CHUNKED else data
        self._send(piece)

    def _send(self, piece: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.write(piece)
            if self.replay is not None:
                self._record(piece)
        else:
            self.pending.append(piece)
            self.pending_size += len(piece)
            if self.pending_size > PENDING_LIMIT:
                self.client.set_paused(PAUSE_BUFFER, True)

    def request_done(self) -> None:
        """The client finished sending this request."""
        self.req_done = True
        if self.done or self.error is not None:
            return
        if self.head.body == CHUNKED:
            self._send(b"0\r\n\r\n")
        self.last_upstream = self.client.ctx.now

    def client_broken(self, err: ProxyError) -> None:
        """The request body turned out unacceptable (malformed chunking, too large)."""
        if self.done:
            return
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        if self.backend is not None:
            self.backend.release()
            self.backend = None
        self.answer(err, close=True)

    def early_data(self, data: bytes) -> None:
        """Client bytes sent right behind an upgrade request, before the backend's answer.

        Held until the backend says 101, then they open the tunnel. Until then they are not
        HTTP the proxy has checked: a backend that refuses the upgrade would read them as its
        next request, past routing, header rewriting and body limits. On any other answer
        they are dropped and the connection closes after it (framing.response_framing).
        """
        if self.held is None:
            self.held = []
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > PENDING_LIMIT:
            self.client.set_paused(PAUSE_BUFFER, True)

    # --- the response (UpstreamConnection's handler) ---------------------------------------------
    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        rel = self.relay
        if rel is None:
            if not self.got_response_bytes:
                self.got_response_bytes = True
                head = self.head
                if (
                    self.req_done
                    and head.keep_alive
                    and not head.http10
                    and not head.upgrade
                    and head.method != b"HEAD"
                    and not self.client.closing
                ):
                    # Relayed as is when it is one whole simple response (fastpath.py).
                    simple = fastpath.simple_response(data)
                    if simple is not None:
                        self.status = simple[0]
                        self.responded = True
                        self.bytes_out = len(data) - simple[1]
                        if self.cold_start is not None:
                            end = simple[1] - 2  # before the blank line
                            data = data[:end] + self._timing() + data[end:]
                        self.client.write(data)
                        self._complete(True, False)
                        return
            rel = self.relay = ResponseRelay(
                self.head,
                self.client.write,
                self._must_close,
                self._timing() if self.cold_start is not None else b"",
            )
        self.last_upstream = self.client.ctx.now
        outcome = rel.feed(data)
        self.status = rel.status
        self.bytes_out = rel.bytes_out
        if outcome == relay.MORE:
            return
        if outcome == relay.DONE:
            self._complete(rel.reusable, rel.close)
        elif outcome == relay.UPGRADED:
            self._upgraded(conn, rel.extra)
        else:
            self._broken(conn, f"{rel.problem} from {conn.backend.addr}")

    def _timing(self) -> bytes:
        """The Server-Timing line of an answer that waited for a backend to come."""
        assert self.cold_start is not None
        ms = self.cold_start * 1000
        return b'Server-Timing: cold-start;dur=%.1f;desc="corral"\r\n' % ms

    def _must_close(self) -> bool:
        return not self.head.keep_alive or not self.req_done or self.client.closing

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if conn is not self.conn:
            return
        if self.tunnel is not None:
            self.end_tunnel()
            return
        self.conn = None
        if self.done:
            return
        if conn.write_blocked:
            self.client.set_paused(PAUSE_UPSTREAM, False)
        rel = self.relay
        if rel is not None and rel.eof():
            # The body was delimited by the connection closing: that was its end.
            self.status = rel.status
            self.bytes_out = rel.bytes_out
            self._complete(False, rel.close)
            return
        detail = f": {exc}" if exc else ""
        self._failed(f"{conn.backend.addr} closed the connection{detail}", sent=self.sent)

    def _broken(self, conn: UpstreamConnection, why: str) -> None:
        # An unusable response: never retried (the backend got the request and answered).
        self.conn = None
        conn.abort()
        self._failed(why, sent=True, retryable=False)

    def upstream_write_blocked(self, blocked: bool) -> None:
        # A backend that stops taking the request is silent too (timeouts.read, from now).
        self.last_upstream = self.client.ctx.now
        self.client.set_paused(PAUSE_UPSTREAM, blocked)

    def client_writable(self, writable: bool) -> None:
        """The client's transport buffer crossed its high (False) or low (True) water mark."""
        if self.conn is not None:
            self.conn.pause_reading(not writable)
            if writable:
                # The read timeout measures the backend's silence, not the time the proxy
                # was not listening because the client was slow.
                self.last_upstream = self.client.ctx.now

    def read_timed_out(self, now: float) -> bool:
        """Called by the server's sweeper; True if the upstream read timeout fired."""
        conn = self.conn
        ctx = self.client.ctx
        if (
            conn is None
            or self.done
            or self.tunnel is not None
            or conn.read_paused  # the proxy is not reading (the client is slow): not silence
            or not (self.req_done or conn.write_blocked)  # the client is still sending
            or now - self.last_upstream <= ctx.read_timeout
        ):
            return False
        self.conn = None
        conn.abort()
        b = self.backend
        self.backend = None
        if b is not None:
            assert self.head.route is not None
            self.head.route.pool.report_failure(b, ctx.eject_failures, ctx.eject_cooldown)
            b.release()
        addr = conn.backend.addr
        self.answer(UpstreamTimeout(f"no response from {addr} within {ctx.read_timeout:g}s"))
        return True

    # --- upgrades ----------------------------------------------------------------------------------
    def _upgraded(self, conn: UpstreamConnection, extra: bytes) -> None:
        """The backend answered 101: from now on bytes are copied both ways untouched."""
        client = self.client
        transport = client.transport
        if transport is None or conn.transport is None:
            self.abort()  # one side is already gone
            return
        if extra:
            client.write(extra)
        self.responded = True
        b = self.backend
        if b is not None:
            b.observe(time.monotonic() - self.started)
        tunnel = self.tunnel = Tunnel(transport, conn.transport)
        conn.tunnel = tunnel
        client.start_tunnel(tunnel)
        held = self.held
        if held:
            conn.write(b"".join(held))
            self.held = None
            self.held_size = 0
            client.set_paused(PAUSE_BUFFER, False)

    def end_tunnel(self) -> None:
        """Either side of an upgraded connection closed: close the other, release the backend."""
        if self.tunnel is None:
            return
        self.tunnel = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if self.backend is not None:
            self.backend.release()
            self.backend = None
        self._finish(True)

    # --- retries -------------------------------------------------------------------------------
    def _failed(self, why: str, *, sent: bool, retryable: bool = True) -> None:
        ctx = self.client.ctx
        b = self.backend
        self.backend = None
        responded = self.responded or (self.relay is not None and self.relay.started)
        attempt = retry.Attempt(sent, self.reused, self.got_response_bytes, responded, retryable)
        decision = retry.decide(
            attempt,
            replayable=self.replay is not None and not self.head.upgrade,
            retry_on_error=ctx.retry_idempotent,
            attempts=self.attempts,
            max_attempts=ctx.max_attempts,
            stale_retries=self.stale_retries,
        )
        if b is not None:
            if decision.charge:
                assert self.head.route is not None
                self.head.route.pool.report_failure(b, ctx.eject_failures, ctx.eject_cooldown)
            b.release()
        if decision.retry is retry.Retry.FRESH:
            # A pooled keep-alive connection the backend had just closed: not a real attempt.
            self.stale_retries += 1
            self.attempts -= 1
            self.fresh_only = True
            log.debug("retrying %s after a stale keep-alive connection", self.describe())
            self._retry()
        elif decision.retry is retry.Retry.ANOTHER:
            if self.head.route is not None:
                self.head.route.pool.retries += 1
            log.info("retrying %s on another backend: %s", self.describe(), why)
            self._retry()
        else:
            self.answer(UpstreamError(why))

    def _retry(self) -> None:
        if self.sent:
            replay = self.replay or []
            self.pending[:0] = replay
            self.pending_size += sum(len(p) for p in replay)
            self.replay = [] if self.replay is not None else None
            self.replay_size = 0
            self.sent = False
        self.relay = None  # the next attempt's response starts from nothing
        self.status = 0
        self._dispatch()

    # --- endings ---------------------------------------------------------------------------------
    def _complete(self, reusable: bool, close: bool) -> None:
        ctx = self.client.ctx
        now = time.monotonic()
        conn = self.conn
        self.conn = None
        b = self.backend
        self.backend = None
        if b is not None:
            b.observe(now - self.started)
        if conn is not None:
            conn.handler = None
            if conn.write_blocked:
                self.client.set_paused(PAUSE_UPSTREAM, False)
            if (
                reusable
                and b is not None
                and not self.head.upgrade  # refused upgrade: early client bytes may have followed
                and self.req_done
                and not self.pending
                and not conn.write_blocked
                and len(ctx.clients) + ctx.upstream_open < ctx.fd_budget  # room_for_upstream
            ):
                conn.idle_since = now
                conn.pause_reading(False)
                if not b.put_idle(conn):
                    conn.close()
            else:
                conn.close()
        if b is not None:
            b.release()
        self._finish(close)

    def answer(self, err: ProxyError, *, close: bool = False) -> None:
        """Reply with the proxy's own short error response (or cut the connection if too late)."""
        if self.done:
            return
        if self.responded or (self.relay is not None and self.relay.started):
            self._abort_client(err.detail)
            return
        client = self.client
        status = err.status
        client.ctx.count_error(status)
        if status >= 500:
            log.warning("%s %s → %d: %s", client.peer, self.describe(), status, err.detail)
        head = self.head
        close = close or not head.keep_alive or not self.req_done or client.closing or head.upgrade
        self.status = status
        self.responded = True
        client.write(
            errors.render(status, err.detail, close=close, head_only=head.method == b"HEAD")
        )
        self._finish(close)

    def _abort_client(self, why: str) -> None:
        log.warning("%s %s: response cut short: %s", self.client.peer, self.describe(), why)
        self._finish(True, abort=True)

    def _finish(self, close: bool, *, abort: bool = False) -> None:
        self.done = True
        self.relay = None  # it refers back to this exchange
        client = self.client
        route = self.head.route
        status = self.status
        if route is not None and 100 <= status < 600:
            route.counts[status // 100 - 1] += 1
            route.latency.observe(time.monotonic() - self.started)
        if client.ctx.access_log:
            self._log_access()
        client.exchange_finished(self, close=close, abort=abort)

    def abort(self) -> None:
        """The client went away: drop everything for this exchange."""
        if self.done:
            return
        self.done = True
        if self.ticket is not None:
            # Its task may not have run yet (then nothing in it would give the place back).
            self.ticket[0].leave(self.ticket[1])
            self.ticket = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            if self.tunnel is not None:
                conn.close()
            else:
                conn.abort()
        self.tunnel = None
        self.relay = None
        if self.backend is not None:
            self.backend.release()
            self.backend = None

    def describe(self) -> str:
        """`METHOD target` for log lines."""
        return f"{self.head.method.decode('latin-1')} {self.head.target.decode('latin-1')}"

    def _log_access(self) -> None:
        access_log.info(
            '%s "%s HTTP/%s" %d %d %.1fms %s',
            self.client.peer,
            self.describe(),
            "1.0" if self.head.http10 else "1.1",
            self.status,
            self.bytes_out,
            (time.monotonic() - self.started) * 1000,
            self.tried[-1].addr if self.tried else "-",
        )
