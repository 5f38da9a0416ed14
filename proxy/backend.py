"""One backend of a pool: its address, state, counters and idle keep-alive connections."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Protocol

# Upper bounds (seconds) of the latency histogram buckets, Prometheus style (+Inf implied).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_IDLE_PER_BACKEND = 256


class IdleConnection(Protocol):
    """What the pool needs from a pooled upstream connection."""

    idle_since: float

    def usable(self) -> bool: ...
    def close(self) -> None: ...


class Load:
    """A pool's requests in flight or waiting for a backend, integrated over time.

    The autoscaler's demand (supervisor/autoscaler.py): `busy_at(now)` differenced between two
    reads is the time-weighted average concurrency in between, however short the requests.
    """

    __slots__ = ("_clock", "_since", "busy", "count", "idle_since")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._since = clock()
        self.count = 0
        self.busy = 0.0  # request-seconds up to `_since`
        self.idle_since: float | None = None  # when count last fell to 0 (None: never busy)

    def add(self, delta: int) -> None:
        now = self._clock()
        self.busy += self.count * (now - self._since)
        self._since = now
        self.count += delta
        if self.count == 0:
            self.idle_since = now

    def busy_at(self, now: float) -> float:
        """Request-seconds up to `now`."""
        return self.busy + self.count * max(0.0, now - self._since)


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
        "load",
        "on_free",
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
        # Set by an autoscaled pool: its demand counter, and who hands a freed slot on.
        self.load: Load | None = None
        self.on_free: Callable[[], None] | None = None

    @property
    def accepting(self) -> bool:
        """Whether new requests (and returning keep-alive connections) are welcome."""
        return self.ready and not self.draining and not self.removed

    def acquire(self) -> None:
        """One request (or tunnel) goes to this backend."""
        self.in_flight += 1
        if self.load is not None:
            self.load.add(1)

    def release(self) -> None:
        """One request (or tunnel) on this backend ended."""
        self.in_flight -= 1
        if self.load is not None:
            self.load.add(-1)
        if self.on_free is not None:
            self.on_free()
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
