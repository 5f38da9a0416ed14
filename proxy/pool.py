"""Backends of one service and their states: ready, draining, ejected, gone.

The pool is told about membership and readiness (by the daemon, or by `run_standalone`); it
answers `pick` with a backend the balancing strategy chose among the eligible ones. It also keeps
each backend's idle keep-alive connections and counters.

When no backend is eligible, what a request does is the pool owner's call (`when_empty`):
queue while instances are on their way, or fail at once when none can come. Scale from zero
(issue 11) adds a third answer: hold the request while an autoscaler starts one; the waiting
requests are already counted here (`queued`), which is the demand it needs.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from collections.abc import Callable, Iterable

from config.model import Balance, HashKey

from .backend import LATENCY_BUCKETS, Backend
from .balance import Strategy, strategy_for

log = logging.getLogger(__name__)


class WhenEmpty(enum.Enum):
    """What a request does when its pool has no eligible backend."""

    QUEUE = "queue"  # backends are on their way (starting, restarting): wait up to queue_timeout
    FAIL = "fail"  # none can come without an order: 503 at once, saying why


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
        self.when_empty = WhenEmpty.QUEUE
        self.empty_reason = ""  # why no backend can come (WhenEmpty.FAIL)

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

    def set_when_empty(self, when: WhenEmpty, reason: str = "") -> None:
        """Say what requests do while no backend is eligible; FAIL answers waiting ones now."""
        if when is WhenEmpty.FAIL and when is not self.when_empty:
            log.info("pool %s: no backend can come: %s", self.name, reason)
        self.when_empty = when
        self.empty_reason = reason
        if when is WhenEmpty.FAIL:
            self._wake()

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
        """Wait up to `timeout` for some backend to become eligible; True if one is.

        Returns False early when the pool is told that none can come (WhenEmpty.FAIL).
        """
        if self._active:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return bool(self._active)

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
            self._wake()

    def _wake(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
