"""Backends of one service and their states: ready, draining, ejected, gone.

The pool is told about membership and readiness (by the daemon, or by `run_standalone`); it
answers `pick` with a backend the balancing strategy chose among the eligible ones. It also keeps
each backend's idle keep-alive connections and counters.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from config.model import Balance, HashKey

from .balance import Strategy, strategy_for

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency histogram buckets, Prometheus style (+Inf implied).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_IDLE_PER_BACKEND = 256


class IdleConnection(Protocol):
    """What the pool needs from a pooled upstream connection."""

    idle_since: float

    def usable(self) -> bool: ...
    def close(self) -> None: ...


class Backend:
    """One upstream address with its state, counters and idle keep-alive connections."""

    __slots__ = (
        "_zero",
        "addr",
        "consecutive_failures",
        "draining",
        "ejected_until",
        "failures",
        "host",
        "idle",
        "in_flight",
        "key",
        "latency_buckets",
        "latency_count",
        "latency_sum",
        "pool_name",
        "port",
        "ready",
        "removed",
        "requests",
        "weight",
    )

    def __init__(self, pool_name: str, key: str, host: str, port: int, weight: int) -> None:
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight}")
        self.pool_name = pool_name
        self.key = key
        self.host = host
        self.port = port
        self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.weight = weight
        self.ready = False
        self.draining = False
        self.removed = False
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.idle: list[IdleConnection] = []
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self._zero: list[asyncio.Future[None]] = []

    @property
    def accepting(self) -> bool:
        """Whether new requests (and returning keep-alive connections) are welcome."""
        return self.ready and not self.draining and not self.removed

    def release(self) -> None:
        """One request (or tunnel) on this backend ended."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._zero:
            for fut in self._zero:
                if not fut.done():
                    fut.set_result(None)
            self._zero.clear()

    def observe(self, seconds: float) -> None:
        """Count one completed request and its latency."""
        self.requests += 1
        self.latency_sum += seconds
        self.latency_count += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def take_idle(self, now: float, max_idle: float) -> IdleConnection | None:
        """The most recently used idle connection still fit for use, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < max_idle and conn.usable():
                return conn
            conn.close()
        return None

    def put_idle(self, conn: IdleConnection) -> bool:
        """Keep `conn` for reuse; False (caller closes it) when not wanted."""
        if not self.accepting or len(self.idle) >= MAX_IDLE_PER_BACKEND:
            return False
        self.idle.append(conn)
        return True

    def close_oldest_idle(self) -> None:
        """Close the idle connection unused for the longest (to free its descriptor)."""
        if self.idle:
            self.idle.pop(0).close()

    def discard(self, conn: IdleConnection) -> None:
        """An idle connection was closed by the backend."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_idle(self, older_than: float | None = None) -> None:
        """Close idle connections (all, or those idle since before `older_than`)."""
        keep = []
        for conn in self.idle:
            if older_than is None or conn.idle_since < older_than:
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep

    async def wait_idle(self) -> None:
        """Return once no request or tunnel is in flight."""
        if self.in_flight > 0:
            fut = asyncio.get_running_loop().create_future()
            self._zero.append(fut)
            await fut


class Pool:
    """The backends of one service; `pick` returns one eligible backend or None."""

    def __init__(
        self,
        name: str,
        balance: Balance = Balance.ROUND_ROBIN,
        hash_key: HashKey = HashKey(),  # noqa: B008 - frozen dataclass, safe as default
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.balance = balance
        self.hash_key = hash_key
        self._clock = clock
        self._rng = rng
        self._strategy: Strategy = strategy_for(balance, rng)
        self._backends: dict[str, Backend] = {}
        self._active: tuple[Backend, ...] = ()
        self._next_expiry = math.inf
        self._waiters: list[asyncio.Future[None]] = []

    # --- membership (called by the daemon) -------------------------------------------------
    def add(self, key: str, host: str, port: int, weight: int = 1) -> None:
        """Add (or replace) backend `key`; it takes no traffic until `set_ready(key, True)`."""
        old = self._backends.get(key)
        if old is not None:
            self._retire(old)
        self._backends[key] = Backend(self.name, key, host, port, weight)
        self._refresh()

    def set_ready(self, key: str, ready: bool) -> None:
        """Readiness from health checks; a backend turning ready wakes queued requests."""
        b = self._backends.get(key)
        if b is None:
            log.debug("pool %s: set_ready on unknown backend %s", self.name, key)
            return
        if ready and not b.ready:
            b.consecutive_failures = 0
            b.ejected_until = 0.0
        b.ready = ready
        if not ready:
            b.close_idle()
        self._refresh()

    async def drain(self, key: str, timeout: float) -> None:
        """Stop new requests to `key` now; return when its in-flight ones end (or `timeout`)."""
        b = self._backends.get(key)
        if b is None:
            return
        b.draining = True
        b.close_idle()
        self._refresh()
        if b.in_flight:
            log.info("pool %s: draining %s (%d in flight)", self.name, key, b.in_flight)
            try:
                async with asyncio.timeout(timeout):
                    await b.wait_idle()
            except TimeoutError:
                log.warning(
                    "pool %s: %s still has %d in flight after %.1fs drain; removing anyway",
                    self.name,
                    key,
                    b.in_flight,
                    timeout,
                )
        if self._backends.get(key) is b:
            self.remove(key)

    def remove(self, key: str) -> None:
        """Forget `key` at once (its process is gone); in-flight requests may be retried."""
        b = self._backends.pop(key, None)
        if b is not None:
            self._retire(b)
            self._refresh()

    def reconfigure(self, balance: Balance, hash_key: HashKey) -> None:
        """Switch strategy (config reload); in-flight requests are unaffected."""
        if balance is not self.balance:
            self._strategy = strategy_for(balance, self._rng)
        self.balance = balance
        self.hash_key = hash_key
        self._strategy.reset(self._active)

    # --- request path (called by the proxy) --------------------------------------------------
    def pick(self, key: str | None = None, exclude: Iterable[Backend] = ()) -> Backend | None:
        """A backend for one request, avoiding `exclude` (already tried) when possible."""
        if self._next_expiry <= self._clock():
            self._refresh()
        active = self._active
        if not active:
            return None
        if exclude:
            tried = set(exclude)
            others = tuple(b for b in active if b not in tried)
            return self._strategy.pick_other(others or active, key)
        return self._strategy.pick(active, key)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` for some backend to become eligible; True if one is."""
        if self._active:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return bool(self._active)
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return True

    @property
    def queued(self) -> int:
        """Requests waiting for a backend to become ready."""
        return len(self._waiters)

    def report_failure(self, b: Backend, eject_after: int, cooldown: float) -> None:
        """A connection-level failure on `b`; `eject_after` in a row eject it for `cooldown`."""
        b.failures += 1
        b.consecutive_failures += 1
        if 0 < eject_after <= b.consecutive_failures and not b.removed:
            b.consecutive_failures = 0
            b.ejected_until = self._clock() + cooldown
            log.warning(
                "pool %s: ejecting %s (%s) for %.1fs after %d consecutive failures",
                self.name,
                b.key,
                b.addr,
                cooldown,
                eject_after,
            )
            self._refresh()

    def backends(self) -> list[Backend]:
        """Current members (not removed), in insertion order."""
        return list(self._backends.values())

    def sweep(self, older_than: float) -> None:
        """Close idle connections unused since `older_than` (monotonic seconds)."""
        for b in self._backends.values():
            if b.idle:
                b.close_idle(older_than)

    def close_idle(self) -> None:
        """Close every idle keep-alive connection (proxy shutdown)."""
        for b in self._backends.values():
            b.close_idle()

    def snapshot(self) -> list[dict[str, object]]:
        """Per-backend state and counters, for status output and tests."""
        now = self._clock()
        out: list[dict[str, object]] = []
        for b in self._backends.values():
            out.append(
                {
                    "key": b.key,
                    "addr": b.addr,
                    "weight": b.weight,
                    "ready": b.ready,
                    "draining": b.draining,
                    "in_flight": b.in_flight,
                    "requests": b.requests,
                    "failures": b.failures,
                    # Monotonic-clock deadline (as `clock`), and the seconds it is away.
                    "ejected_until": b.ejected_until if b.ejected_until > now else None,
                    "ejected_for": round(b.ejected_until - now, 3) if b.ejected_until > now else 0,
                    "idle_connections": len(b.idle),
                    "latency_count": b.latency_count,
                    "latency_avg": b.latency_sum / b.latency_count if b.latency_count else None,
                    # Per-bucket counts (not cumulative), keyed like Prometheus `le` labels.
                    "latency_buckets": {
                        ("+Inf" if math.isinf(bound) else f"{bound:g}"): n
                        for bound, n in zip(
                            [*LATENCY_BUCKETS, math.inf], b.latency_buckets, strict=True
                        )
                    },
                }
            )
        return out

    # --- internals ---------------------------------------------------------------------------
    def _retire(self, b: Backend) -> None:
        b.removed = True
        b.close_idle()

    def _refresh(self) -> None:
        now = self._clock()
        eligible = [b for b in self._backends.values() if b.accepting]
        healthy = [b for b in eligible if b.ejected_until <= now]
        # All eligible backends ejected: use them anyway rather than answer 503 ("panic mode").
        active = tuple(healthy or eligible)
        expiries = [b.ejected_until for b in eligible if b.ejected_until > now]
        self._next_expiry = min(expiries) if expiries else math.inf
        if active != self._active:
            self._active = active
            self._strategy.reset(active)
        if active and self._waiters:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()
