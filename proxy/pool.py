"""Backends of one service and their states: ready, draining, ejected, gone.

The pool is told about membership and readiness (by the daemon, or by `run_standalone`); it
answers `pick` with a backend the balancing strategy chose among the eligible ones. It also keeps
each backend's idle keep-alive connections and counters.

When no backend is eligible, what a request does is the pool owner's call (`when_empty`):
queue while instances are on their way, fail at once when none can come, or hold it while an
autoscaler starts one (scale from zero). Waiting requests are handed a backend in the order
they came, as soon as one has room.

An autoscaled pool (`autoscale`) also limits the requests on each backend (`concurrency = 1`
never lets two onto one), bounds how many may wait, tells its owner the moment a request has
to wait (`on_demand`), and counts its requests in flight or waiting over time (`load`): the
demand the autoscaler reads. The pool knows nothing of who starts backends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from config.model import Balance, HashKey

from .backend import LATENCY_BUCKETS, Backend, Load
from .balance import Strategy, strategy_for

log = logging.getLogger(__name__)


class WhenEmpty(enum.Enum):
    """What a request does when its pool has no eligible backend."""

    QUEUE = "queue"  # backends are on their way (starting, restarting): wait up to queue_timeout
    FAIL = "fail"  # none can come without an order: 503 at once, saying why
    HOLD = "hold"  # an autoscaler starts one on demand: wait up to hold_timeout, telling it


@dataclass(slots=True, eq=False)
class Ticket:
    """A request's place in line for a backend: handed one (already acquired), or None."""

    future: asyncio.Future[Backend | None]
    key: str | None  # its hash key
    exclude: tuple[Backend, ...]  # backends it already tried
    load: Load | None = None  # the counter it was added to (the pool's may be replaced)
    left: bool = False
    refusal: str = ""  # why it was answered without a backend (`refuse_waiting`)


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
        self._waiters: list[asyncio.Future[None]] = []  # wait_ready
        self._queue: collections.deque[Ticket] = collections.deque()  # wait_backend, in order
        self.when_empty = WhenEmpty.QUEUE
        self.empty_reason = ""  # why no backend can come (WhenEmpty.FAIL)
        # Autoscaling (see `autoscale`); off: no limit, no count, nobody told.
        self.limit = 0  # requests at once on one backend (0: no limit)
        self.hold_timeout = 0.0
        self.max_held = 0  # requests that may wait at once (0: no bound but the proxy's own)
        self.cold_start_header = False
        self.on_demand: Callable[[], None] | None = None
        self.load: Load | None = None
        self.retries = 0  # requests sent again to another backend after a failure
        self.ejections = 0  # backends taken out for eject.cooldown after eject.failures

    # --- membership (called by the daemon) -------------------------------------------------
    def add(self, key: str, host: str, port: int, weight: int = 1) -> None:
        """Add (or replace) backend `key`; it takes no traffic until `set_ready(key, True)`."""
        old = self._backends.get(key)
        if old is not None:
            self._retire(old)
        b = self._backends[key] = Backend(self.name, key, host, port, weight)
        self._watch(b)
        self._refresh()

    def autoscale(
        self,
        *,
        limit: int = 0,
        hold_timeout: float = 0.0,
        max_held: int = 0,
        cold_start_header: bool = False,
        on_demand: Callable[[], None] | None = None,
        enabled: bool = True,
    ) -> None:
        """Make this an autoscaled pool (or, `enabled=False`, an ordinary one again).

        `limit`: requests at once on one backend; `hold_timeout`: how long a request waits
        in HOLD mode; `max_held`: how many may wait (more get 503 at once); `on_demand`: called
        whenever a request has to wait; `cold_start_header`: answers that waited for a backend
        to come say how long (Server-Timing).
        """
        if not enabled:
            self.limit, self.max_held, self.on_demand = 0, 0, None
            self.cold_start_header, self.load = False, None
            if self.when_empty is WhenEmpty.HOLD:
                self.when_empty = WhenEmpty.QUEUE
        else:
            self.limit, self.hold_timeout, self.max_held = limit, hold_timeout, max_held
            self.cold_start_header, self.on_demand = cold_start_header, on_demand
            if self.load is None:
                self.load = Load(self._clock)
                self.load.add(sum(b.in_flight for b in self._backends.values()))
        for b in self._backends.values():
            self._watch(b)
        self._grant()  # a raised limit makes room at once

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

    def refuse_waiting(self, reason: str) -> None:
        """Answer every request in line now, without a backend, saying `reason` (the backend
        they wait for cannot come); those arriving later wait as `when_empty` says."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.refusal = reason
                waiter.future.set_result(None)

    def reconfigure(self, balance: Balance, hash_key: HashKey) -> None:
        """Switch strategy (config reload); in-flight requests are unaffected."""
        if balance is not self.balance:
            self._strategy = strategy_for(balance, self._rng)
        self.balance = balance
        self.hash_key = hash_key
        self._strategy.reset(self._active)

    # --- request path (called by the proxy) --------------------------------------------------
    def pick(self, key: str | None = None, exclude: Iterable[Backend] = ()) -> Backend | None:
        """A backend for one request, avoiding `exclude` (already tried) when possible.

        None when none is eligible, when every one is at the pool's `limit`, or when other
        requests are waiting (they go first, in order: `wait_backend`).
        """
        if self._next_expiry <= self._clock():
            self._refresh()
        if self._queue:
            return None
        return self._choose(key, exclude)

    def _choose(self, key: str | None, exclude: Iterable[Backend]) -> Backend | None:
        active = self._active
        if not active:
            return None
        limit = self.limit
        if limit:
            room = tuple(b for b in active if b.in_flight < limit)
            if len(room) != len(active):
                if not room:
                    return None
                # A filtered tuple: a stateless pick, as for a retry.
                return self._strategy.pick_other(_avoiding(room, exclude), key)
        if exclude:
            return self._strategy.pick_other(_avoiding(active, exclude), key)
        return self._strategy.pick(active, key)

    @property
    def empty(self) -> bool:
        """No backend is eligible (as opposed to every one being at the limit)."""
        return not self._active

    @property
    def held_full(self) -> bool:
        """As many requests wait as may (`max_held`): the next one is refused."""
        return 0 < self.max_held <= len(self._queue)

    def enqueue(self, key: str | None = None, exclude: Iterable[Backend] = ()) -> Ticket:
        """Take a place in line for a backend with room, now (synchronously, so `held_full`
        counts it before the next request is judged); `wait_granted` then waits for it.

        The ticket must end in `wait_granted` or `leave` (the request gave up before it
        waited): either releases its place and the request's count in `load`.
        """
        fut: asyncio.Future[Backend | None] = asyncio.get_running_loop().create_future()
        waiter = Ticket(fut, key, tuple(exclude))
        self._queue.append(waiter)
        if self.load is not None:
            waiter.load = self.load
            waiter.load.add(1)
        if self.on_demand is not None:
            self.on_demand()
        self._grant()  # room may be there already (a limit with nobody ahead)
        return waiter

    async def wait_granted(self, ticket: Ticket, timeout: float) -> Backend | None:
        """Wait up to `timeout` for `ticket`'s backend, behind those already waiting.

        Returns the backend, already acquired for this request (release it), or None: the
        time ran out, or the pool was told none can come (WhenEmpty.FAIL).
        """
        taken = False
        try:
            async with asyncio.timeout(timeout):
                b = await ticket.future
            taken = True
            return b
        except TimeoutError:
            return None
        finally:
            self.leave(ticket, taken=taken)

    def leave(self, ticket: Ticket, *, taken: bool = False) -> None:
        """`ticket`'s request waits no more (idempotent); a backend handed to it just as it
        gave up is passed on."""
        if ticket.left:
            return
        ticket.left = True
        with contextlib.suppress(ValueError):
            self._queue.remove(ticket)
        if ticket.load is not None:
            ticket.load.add(-1)
        fut = ticket.future
        if not fut.done():
            fut.cancel()
        elif not taken and not fut.cancelled():
            granted = fut.result()
            if granted is not None:
                granted.release()

    async def wait_backend(
        self, timeout: float, key: str | None = None, exclude: Iterable[Backend] = ()
    ) -> Backend | None:
        """`enqueue` then `wait_granted`: a backend with room within `timeout`, or None."""
        return await self.wait_granted(self.enqueue(key, exclude), timeout)

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
        """Requests waiting for a backend (to become ready, or to have room)."""
        return len(self._waiters) + len(self._queue)

    def report_failure(self, b: Backend, eject_after: int, cooldown: float) -> None:
        """A connection-level failure on `b`; `eject_after` in a row eject it for `cooldown`."""
        b.failures += 1
        b.consecutive_failures += 1
        if 0 < eject_after <= b.consecutive_failures and not b.removed:
            b.consecutive_failures = 0
            b.ejected_until = self._clock() + cooldown
            self.ejections += 1
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
        if active:
            if self._waiters:
                self._wake_ready()
            if self._queue:
                self._grant()

    def _watch(self, b: Backend) -> None:
        b.load = self.load
        b.on_free = self._grant if self.limit else None

    def _grant(self) -> None:
        """Hand backends with room to waiting requests, first come first served."""
        queue = self._queue
        while queue:
            waiter = queue[0]
            if waiter.future.done():  # gave up (timed out, client gone)
                queue.popleft()
                continue
            b = self._choose(waiter.key, waiter.exclude)
            if b is None:
                return
            queue.popleft()
            b.acquire()
            waiter.future.set_result(b)

    def _wake_ready(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    def _wake(self) -> None:
        """None can come: every waiting request is answered now."""
        self._wake_ready()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)


def _avoiding(cands: tuple[Backend, ...], exclude: Iterable[Backend]) -> tuple[Backend, ...]:
    """`cands` without those already tried, unless that leaves none."""
    if not exclude:
        return cands
    tried = set(exclude)
    others = tuple(b for b in cands if b not in tried)
    return others or cands
