"""An autoscaled pool: the per-backend limit, waiting in arrival order, holding at zero while
telling its owner, and the request-seconds counter the autoscaler reads."""

from __future__ import annotations

import asyncio

import pytest

from proxy.backend import Backend, Load
from proxy.pool import Pool, WhenEmpty

from .test_proxy_pool import Clock


def _pool(*keys: str, limit: int = 1, clock: Clock | None = None) -> tuple[Pool, list[str]]:
    demanded: list[str] = []
    pool = Pool("fn", clock=clock or Clock())
    pool.autoscale(
        limit=limit, hold_timeout=5.0, max_held=3, on_demand=lambda: demanded.append("!")
    )
    pool.set_when_empty(WhenEmpty.HOLD)
    for i, key in enumerate(keys):
        pool.add(key, "127.0.0.1", 9000 + i)
        pool.set_ready(key, True)
    return pool, demanded


def _take(pool: Pool) -> Backend | None:
    b = pool.pick()
    if b is not None:
        b.acquire()
    return b


def test_concurrency_one_never_puts_two_requests_on_a_backend() -> None:
    pool, _ = _pool("fn.1", "fn.2")
    first, second = _take(pool), _take(pool)
    assert first is not None and second is not None and first is not second
    assert pool.pick() is None  # both full
    first.release()
    again = _take(pool)
    assert again is first
    assert max(b.in_flight for b in pool.backends()) == 1


async def test_waiting_requests_are_served_in_arrival_order() -> None:
    pool, demanded = _pool("fn.1")
    busy = _take(pool)
    assert busy is not None
    waiters = [asyncio.ensure_future(pool.wait_backend(5.0, key=str(i))) for i in range(3)]
    await asyncio.sleep(0)
    assert pool.queued == 3 and len(demanded) == 3  # each one told the owner
    assert pool.pick() is None  # a newcomer queues behind them, even once there is room
    served: list[int] = []
    for _ in range(3):
        busy.release()  # a slot frees: the first in line gets it, already acquired
        await asyncio.sleep(0)
        done = [i for i, w in enumerate(waiters) if w.done() and i not in served]
        assert len(done) == 1
        served += done
        got = waiters[done[0]].result()
        assert got is busy and busy.in_flight == 1
    assert served == [0, 1, 2]


async def test_at_zero_requests_are_held_until_a_backend_comes() -> None:
    pool, demanded = _pool()
    assert pool.empty
    waiters = [asyncio.ensure_future(pool.wait_backend(5.0)) for _ in range(2)]
    await asyncio.sleep(0)
    assert len(demanded) == 2 and pool.queued == 2
    pool.add("fn.1", "127.0.0.1", 9001)
    pool.set_ready("fn.1", True)
    await asyncio.sleep(0)
    # One slot (limit 1): the first held request has it, the second waits for it.
    assert waiters[0].done() and not waiters[1].done()
    first = waiters[0].result()
    assert first is not None
    first.release()
    await asyncio.sleep(0)
    assert waiters[1].result() is first


async def test_the_hold_is_bounded_in_time_and_count() -> None:
    pool, _ = _pool()
    assert await pool.wait_backend(0.01) is None
    waiters = [asyncio.ensure_future(pool.wait_backend(5.0)) for _ in range(3)]
    await asyncio.sleep(0)
    assert pool.held_full  # max_held = 3: the next request is refused at once
    pool.set_when_empty(WhenEmpty.FAIL, "stopped")  # nothing can come: all answered now
    assert [await w for w in waiters] == [None, None, None]
    assert not pool.held_full


async def test_a_grant_to_a_request_that_gave_up_is_passed_on() -> None:
    pool, _ = _pool("fn.1")
    busy = _take(pool)
    assert busy is not None
    gone = asyncio.ensure_future(pool.wait_backend(5.0))
    nxt = asyncio.ensure_future(pool.wait_backend(5.0))
    await asyncio.sleep(0)
    busy.release()  # granted to `gone` ...
    gone.cancel()  # ... which is cancelled before it ran (its client left)
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0)
    assert nxt.done() and nxt.result() is busy and busy.in_flight == 1


def test_load_counts_request_seconds_however_short() -> None:
    clock = Clock()
    pool, _ = _pool("fn.1", limit=0, clock=clock)
    load = pool.load
    assert load is not None and load.idle_since == 100.0  # idle since it began counting
    b = _take(pool)
    assert b is not None
    clock.now += 1.0
    c = _take(pool)
    assert c is not None
    clock.now += 0.5
    assert load.busy_at(clock.now) == pytest.approx(1.0 + 2 * 0.5)
    b.release()
    c.release()
    assert (load.count, load.idle_since) == (0, clock.now)
    clock.now += 10.0
    assert load.busy_at(clock.now) == pytest.approx(2.0)


def test_a_pool_that_stops_autoscaling_has_no_limit_and_no_counter() -> None:
    pool, _ = _pool("fn.1")
    assert _take(pool) is not None and pool.pick() is None
    pool.autoscale(enabled=False)
    assert pool.when_empty is WhenEmpty.QUEUE and pool.load is None
    assert pool.pick() is not None  # no limit any more


def test_load_on_its_own() -> None:
    t = [0.0]
    load = Load(lambda: t[0])
    load.add(3)
    t[0] = 2.0
    load.add(-3)
    assert (load.busy_at(5.0), load.count, load.idle_since) == (6.0, 0, 2.0)


async def test_a_place_in_line_counts_at_once_so_the_hold_bound_is_exact() -> None:
    # Requests parsed in one loop iteration each take their place before any task runs: the
    # fourth sees the three before it (max_held = 3), not an empty line.
    pool, demanded = _pool()
    tickets = []
    for _ in range(3):
        assert not pool.held_full
        tickets.append(pool.enqueue())
    assert pool.held_full and pool.queued == 3 and len(demanded) == 3
    assert pool.load is not None and pool.load.count == 3
    # A request that gives up before its wait ever ran gives its place back (once).
    pool.leave(tickets[0])
    pool.leave(tickets[0])
    assert not pool.held_full and pool.queued == 2 and pool.load.count == 2
    pool.add("fn.1", "127.0.0.1", 9001)
    pool.set_ready("fn.1", True)  # the first still in line gets it, already acquired
    got = await pool.wait_granted(tickets[1], 5.0)
    assert got is not None and got.in_flight == 1
    assert await pool.wait_granted(tickets[2], 0.01) is None  # limit 1: no room in time
    assert pool.queued == 0 and pool.load.count == 1  # the one on fn.1


async def test_refused_waiters_say_why_and_later_ones_are_held_again() -> None:
    pool, _ = _pool()
    tickets = [pool.enqueue() for _ in range(2)]
    pool.refuse_waiting("fn.1 failed at start")
    assert [await pool.wait_granted(t, 5.0) for t in tickets] == [None, None]
    assert [t.refusal for t in tickets] == ["fn.1 failed at start"] * 2
    assert pool.queued == 0 and pool.when_empty is WhenEmpty.HOLD
    later = pool.enqueue()
    assert pool.queued == 1 and not later.refusal
    pool.leave(later)
