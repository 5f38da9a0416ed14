"""One request and its response: pick a backend, forward, retry, relay, or answer an error.

`Exchange` is assembled from its parts: the shared fields (state.py), the response relay
(relay.py) and upgrades (tunnel.py); dispatch, request bodies, retries and endings live here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from config.model import Balance

from . import errors, framing, headers, retry
from .context import PENDING_LIMIT, REPLAY_LIMIT, access_log
from .framing import CHUNK
from .relay import ResponseRelay
from .state import PAUSE_BUFFER, PAUSE_UPSTREAM
from .tunnel import Tunnel
from .upstream import UpstreamConnection, connect

if TYPE_CHECKING:
    from .pool import Backend, Pool

log = logging.getLogger(__name__)


class Exchange(ResponseRelay, Tunnel):
    """One proxied request, from parsed head to finished response."""

    def start(self) -> None:
        """Begin forwarding (the client connection calls this when it is this one's turn)."""
        self.started = time.monotonic()
        if self.error is not None:
            self.answer(self.error.status, self.error.detail)
            return
        self._dispatch()

    def _dispatch(self) -> None:
        assert self.route is not None
        pool = self.route.pool
        key = self._hash_value(pool) if pool.balance is Balance.HASH else None
        b = pool.pick(key, self.tried)
        if b is None:
            self.task = asyncio.get_running_loop().create_task(self._queue(pool))
            return
        b.in_flight += 1
        self.backend = b
        self.attempts += 1
        self.tried.append(b)
        conn = None
        if not self.fresh_only:
            conn = b.take_idle(time.monotonic(), self.client.ctx.idle_timeout)
        if conn is not None:
            assert isinstance(conn, UpstreamConnection)
            self._attach(conn, reused=True)
        else:
            # Not cancelled when the client leaves: it notices `done` and closes the connection
            # (cancelling could lose a connection that was established a moment earlier).
            self.client.ctx.spawn(self._connect(b))

    async def _queue(self, pool: Pool) -> None:
        remaining = self.started + self.client.ctx.queue_timeout - time.monotonic()
        ok = remaining > 0 and await pool.wait_ready(remaining)
        self.task = None
        if self.done:
            return
        if ok:
            self._dispatch()
        else:
            self.answer(503, f"no ready backend in pool {pool.name!r}")

    async def _connect(self, b: Backend) -> None:
        ctx = self.client.ctx
        try:
            conn = await connect(b, ctx.connect_timeout)
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
        conn.ex = self
        conn.parser = None  # created on demand: most responses take the fast path
        self.reused = reused
        self.got_response_bytes = False
        self.last_upstream = self.client.ctx.now
        pending = self.pending
        if pending:
            conn.write(b"".join([self.head, *pending]))
            for piece in pending:
                self._record(piece)
            pending.clear()
            self.pending_size = 0
            self.client.set_paused(PAUSE_BUFFER, False)
        else:
            conn.write(self.head)
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
            raw = headers.find(self.lines, hk.name.lower().encode("latin-1"))
            value = raw.decode("latin-1") if raw is not None else None
        elif hk.source == "cookie":
            value = headers.cookie(self.lines, hk.name)
        return value if value is not None else self.client.peer

    def body(self, data: bytes) -> None:
        if self.done or self.error is not None:
            return
        self.body_seen += len(data)
        max_body = self.client.ctx.max_body
        if max_body and self.body_seen > max_body:
            self.client_broken(errors.BadRequest(f"body larger than {max_body} bytes", 413))
            return
        piece = b"%x\r\n%b\r\n" % (len(data), data) if self.chunked_in else data
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
        if self.chunked_in:
            self._send(b"0\r\n\r\n")
        self.last_upstream = self.client.ctx.now

    def client_broken(self, err: errors.ProxyError) -> None:
        """The request body turned out unacceptable (malformed chunking, too large)."""
        if self.done:
            return
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        if self.backend is not None:
            self.backend.release()
            self.backend = None
        self.keep_alive = False
        self.answer(err.status, err.detail)

    def _complete(self, *, reusable: bool) -> None:
        self.flush()
        now = time.monotonic()
        conn = self.conn
        self.conn = None
        b = self.backend
        self.backend = None
        if b is not None:
            b.observe(now - self.started)
            b.consecutive_failures = 0
        if conn is not None:
            conn.ex = None
            if conn.write_blocked:
                self.client.set_paused(PAUSE_UPSTREAM, False)
            if (
                reusable
                and b is not None
                and not self.upgrade  # refused upgrade: early client bytes may have followed
                and self.req_done
                and not self.pending
                and not conn.write_blocked
            ):
                conn.idle_since = now
                conn.pause_reading(False)
                if not b.put_idle(conn):
                    conn.close()
            else:
                conn.close()
        if b is not None:
            b.release()
        self._finish(self.close_after)

    def answer(self, status: int, detail: str) -> None:
        """Reply with the proxy's own short error response (or cut the connection if too late)."""
        if self.done:
            return
        if self.resp_started:
            self._abort_client(detail)
            return
        client = self.client
        client.ctx.count_error(status)
        if status >= 500:
            log.warning("%s %s → %d: %s", client.peer, self.describe(), status, detail)
        close = not self.keep_alive or not self.req_done or client.closing or self.upgrade
        self.status = status
        self.resp_started = True
        client.write(errors.render(status, detail, close=close, head_only=self.method == b"HEAD"))
        self._finish(close)

    def _abort_client(self, why: str) -> None:
        log.warning("%s %s: response cut short: %s", self.client.peer, self.describe(), why)
        self.flush()
        self._finish(True, abort=True)

    def _finish(self, close: bool, *, abort: bool = False) -> None:
        self.done = True
        client = self.client
        route = self.route
        status = self.status
        if route is not None and 100 <= status < 600:
            route.counts[status // 100 - 1] += 1
        if client.ctx.access_log:
            self._log_access()
        client.exchange_finished(self, close=close, abort=abort)

    def describe(self) -> str:
        """`METHOD target` for log lines."""
        return f"{self.method.decode('latin-1')} {self.target.decode('latin-1')}"

    def _log_access(self) -> None:
        access_log.info(
            '%s "%s %s HTTP/%s" %d %d %.1fms %s',
            self.client.peer,
            self.method.decode("latin-1"),
            self.target.decode("latin-1"),
            "1.0" if self.http10 else "1.1",
            self.status,
            self.bytes_out,
            (time.monotonic() - self.started) * 1000,
            self.tried[-1].addr if self.tried else "-",
        )

    def abort(self) -> None:
        """The client went away: drop everything for this exchange."""
        if self.done:
            return
        self.done = True
        if self.task is not None:
            self.task.cancel()
            self.task = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            if self.tunnel_open:
                conn.close()
            else:
                conn.abort()
        self.tunnel_open = False
        if self.backend is not None:
            self.backend.release()
            self.backend = None

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if conn is not self.conn:
            return
        if self.tunnel_open:
            self.end_tunnel()
            return
        self.conn = None
        if self.done:
            return
        if conn.write_blocked:
            self.client.set_paused(PAUSE_UPSTREAM, False)
        if self.head_done and framing.closed_body_complete(self.mode, self.resp_chunked):
            # The body was delimited by the connection closing: that was its end.
            if self.mode == CHUNK:
                self.out.append(b"0\r\n\r\n")
            self._complete(reusable=False)
            return
        assert self.backend is not None
        detail = f": {exc}" if exc else ""
        self._failed(f"{self.backend.addr} closed the connection{detail}", sent=self.sent)

    def upstream_broken(self, conn: UpstreamConnection, why: str) -> None:
        if conn is not self.conn or self.done:
            return
        self.conn = None
        conn.abort()
        self._failed(why, sent=True, retryable=False)

    def upstream_write_blocked(self, blocked: bool) -> None:
        self.client.set_paused(PAUSE_UPSTREAM, blocked)

    def read_timed_out(self, now: float) -> bool:
        """Called by the server's sweeper; True if the upstream read timeout fired."""
        conn = self.conn
        ctx = self.client.ctx
        if (
            conn is None
            or self.done
            or self.tunnel_open
            or not self.req_done
            or now - self.last_upstream <= ctx.read_timeout
        ):
            return False
        self.conn = None
        conn.abort()
        b = self.backend
        self.backend = None
        if b is not None:
            assert self.route is not None
            self.route.pool.report_failure(b, ctx.eject_failures, ctx.eject_cooldown)
            b.release()
        self.answer(504, f"no response from {conn.backend.addr} within {ctx.read_timeout:g}s")
        return True

    def _failed(self, why: str, *, sent: bool, retryable: bool = True) -> None:
        ctx = self.client.ctx
        b = self.backend
        self.backend = None
        attempt = retry.Attempt(
            sent, self.reused, self.got_response_bytes, self.resp_started, retryable
        )
        decision = retry.decide(
            attempt,
            replayable=self.idempotent and self.replay is not None and not self.upgrade,
            retry_on_error=ctx.retry_idempotent,
            attempts=self.attempts,
            max_attempts=ctx.max_attempts,
            stale_retries=self.stale_retries,
        )
        if b is not None:
            if decision.charge:
                assert self.route is not None
                self.route.pool.report_failure(b, ctx.eject_failures, ctx.eject_cooldown)
            b.release()
        if decision.retry is retry.Retry.FRESH:
            # A pooled keep-alive connection the backend had just closed: not a real attempt.
            self.stale_retries += 1
            self.attempts -= 1
            self.fresh_only = True
            log.debug("retrying %s after a stale keep-alive connection", self.describe())
            self._retry()
        elif decision.retry is retry.Retry.ANOTHER:
            log.info("retrying %s on another backend: %s", self.describe(), why)
            self._retry()
        elif self.resp_started:
            self._abort_client(why)
        else:
            self.answer(502, why)

    def _retry(self) -> None:
        if self.sent:
            replay = self.replay or []
            self.pending[:0] = replay
            self.pending_size += sum(len(p) for p in replay)
            self.replay = [] if self.replay is not None else None
            self.replay_size = 0
            self.sent = False
        self.status = 0
        self.reason = b""
        self.resp_lines.clear()
        self.resp_cl = self.resp_chunked = self.head_done = False
        self.resp_te = self.resp_conn = self.resp_upgrade = None
        self.out.clear()
        self._dispatch()
