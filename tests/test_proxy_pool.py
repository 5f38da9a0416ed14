"""Pool membership and states, with an injected clock; router matching."""

from __future__ import annotations

import asyncio

import pytest

from config.model import Balance, HashKey, RouteSpec
from proxy.pool import Pool, WhenEmpty
from proxy.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready_pool(*keys: str, clock: Clock | None = None) -> Pool:
    pool = Pool("web", clock=clock or Clock())
    for i, key in enumerate(keys):
        pool.add(key, "127.0.0.1", 9000 + i)
        pool.set_ready(key, True)
    return pool


def test_added_backends_take_no_traffic_until_ready() -> None:
    pool = Pool("web")
    pool.add("web.1", "127.0.0.1", 9001)
    assert pool.pick() is None
    pool.set_ready("web.1", True)
    b = pool.pick()
    assert b is not None and b.key == "web.1" and b.addr == "127.0.0.1:9001"
    pool.set_ready("web.1", False)
    assert pool.pick() is None


def test_remove_is_immediate_and_idempotent() -> None:
    pool = ready_pool("a", "b")
    pool.remove("a")
    pool.remove("a")
    pool.remove("never-there")
    assert {pool.pick().key for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    assert [s["key"] for s in pool.snapshot()] == ["b"]


def test_pick_avoids_tried_backends_when_it_can() -> None:
    pool = ready_pool("a", "b", "c")
    a = next(b for b in pool.backends() if b.key == "a")
    assert all(pool.pick(exclude=[a]).key != "a" for _ in range(20))  # type: ignore[union-attr]
    # Everything tried: any backend again (the retry budget bounds this).
    assert pool.pick(exclude=pool.backends()) is not None


def test_consecutive_failures_eject_for_the_cooldown() -> None:
    clock = Clock()
    pool = ready_pool("a", "b", clock=clock)
    a = next(b for b in pool.backends() if b.key == "a")
    pool.report_failure(a, eject_after=3, cooldown=10.0)
    pool.report_failure(a, eject_after=3, cooldown=10.0)
    assert {pool.pick().key for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]
    pool.report_failure(a, eject_after=3, cooldown=10.0)
    assert {pool.pick().key for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    snap = {s["key"]: s for s in pool.snapshot()}
    assert snap["a"]["ejected_until"] == 110.0 and snap["a"]["failures"] == 3
    clock.now = 110.5
    assert {pool.pick().key for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]


def test_all_ejected_still_serves_rather_than_503() -> None:
    pool = ready_pool("a")
    (a,) = pool.backends()
    pool.report_failure(a, eject_after=1, cooldown=60.0)
    assert pool.pick() is a


def test_ready_again_clears_ejection() -> None:
    pool = ready_pool("a", "b")
    a = pool.backends()[0]
    pool.report_failure(a, eject_after=1, cooldown=60.0)
    pool.set_ready("a", False)
    pool.set_ready("a", True)
    assert {pool.pick().key for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]


async def test_wait_ready_wakes_as_soon_as_a_backend_is_ready() -> None:
    pool = Pool("web")
    pool.add("a", "127.0.0.1", 9000)
    waiter = asyncio.create_task(pool.wait_ready(30.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    pool.set_ready("a", True)
    async with asyncio.timeout(1.0):
        assert await waiter is True


async def test_wait_ready_times_out() -> None:
    pool = Pool("web")
    assert await pool.wait_ready(0.01) is False


async def test_drain_stops_new_requests_and_waits_for_in_flight() -> None:
    pool = ready_pool("a", "b")
    a = next(b for b in pool.backends() if b.key == "a")
    a.in_flight = 2
    drain = asyncio.create_task(pool.drain("a", timeout=30.0))
    await asyncio.sleep(0)
    assert {pool.pick().key for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    assert {s["key"]: s["draining"] for s in pool.snapshot()} == {"a": True, "b": False}
    a.release()
    await asyncio.sleep(0)
    assert not drain.done()
    a.release()
    async with asyncio.timeout(1.0):
        await drain
    assert [s["key"] for s in pool.snapshot()] == ["b"]


async def test_drain_is_bounded_by_its_timeout() -> None:
    pool = ready_pool("a")
    pool.backends()[0].in_flight = 1
    async with asyncio.timeout(2.0):
        await pool.drain("a", timeout=0.05)
    assert pool.snapshot() == []


async def test_drain_of_unknown_backend_returns() -> None:
    await Pool("web").drain("nope", timeout=1.0)


def test_reconfigure_switches_strategy() -> None:
    pool = ready_pool("a", "b", "c")
    pool.reconfigure(Balance.HASH, HashKey("header", "X-User"))
    assert pool.balance is Balance.HASH and pool.hash_key.name == "X-User"
    assert len({pool.pick("same-user").key for _ in range(10)}) == 1  # type: ignore[union-attr]


def test_weights_must_be_positive() -> None:
    with pytest.raises(ValueError, match="weight"):
        Pool("web").add("a", "127.0.0.1", 1, weight=0)


def test_snapshot_reports_counters() -> None:
    pool = ready_pool("a")
    b = pool.backends()[0]
    b.observe(0.003)
    b.observe(0.2)
    (snap,) = pool.snapshot()
    assert snap["requests"] == 2 and snap["ready"] is True and snap["weight"] == 1
    assert snap["latency_avg"] == pytest.approx(0.1015)
    buckets = snap["latency_buckets"]
    assert isinstance(buckets, dict) and sum(buckets.values()) == 2


# --- router -------------------------------------------------------------------------------------


def router_with(*routes: tuple[RouteSpec, str]) -> tuple[Router, dict[str, Pool]]:
    pools = {name: Pool(name) for _, name in routes}
    router = Router()
    router.set_routes([(spec, pools[name]) for spec, name in routes])
    return router, pools


def matched(router: Router, host: str | None, path: str) -> str | None:
    m = router.match(host, path)
    return m[1].name if m else None


def test_longest_prefix_wins_on_segment_boundaries() -> None:
    router, _ = router_with(
        (RouteSpec("/"), "root"), (RouteSpec("/api"), "api"), (RouteSpec("/api/v2/"), "v2")
    )
    assert matched(router, "x", "/") == "root"
    assert matched(router, "x", "/api") == "api"
    assert matched(router, "x", "/api/users") == "api"
    assert matched(router, "x", "/apix") == "root"  # not a segment match
    assert matched(router, "x", "/api/v2/things") == "v2"
    assert matched(router, "x", "/api/v2") == "v2"


def test_host_specific_routes_beat_host_less_ones() -> None:
    router, _ = router_with(
        (RouteSpec("/"), "any"),
        (RouteSpec("/", host="api.localhost"), "api"),
        (RouteSpec("/admin", host="API.localhost"), "admin"),
    )
    assert matched(router, "api.localhost", "/x") == "api"
    assert matched(router, "API.LOCALHOST:8080", "/admin/x") == "admin"  # case, port ignored
    assert matched(router, "other.localhost", "/admin") == "any"
    assert matched(router, None, "/x") == "any"


def test_no_match_without_catch_all() -> None:
    router, _ = router_with((RouteSpec("/api"), "api"), (RouteSpec("/", host="h"), "h"))
    assert matched(router, "other", "/") is None
    assert matched(router, "h", "/anything") == "h"


def test_strip_prefix_rewrites_the_target_byte_exact() -> None:
    router, _ = router_with(
        (RouteSpec("/api", strip_prefix=True), "api"), (RouteSpec("/keep"), "keep")
    )
    api = router.lookup(b"x", b"/api/users")
    keep = router.lookup(b"x", b"/keep/a")
    assert api is not None and keep is not None
    assert api.rewrite(b"/api/users?q=%2F&x") == b"/users?q=%2F&x"
    assert api.rewrite(b"/api") == b"/"
    assert api.rewrite(b"/api?x=1") == b"/?x=1"
    assert keep.rewrite(b"/keep/a?b") == b"/keep/a?b"


def test_set_routes_swaps_the_table_and_keeps_counters() -> None:
    router, pools = router_with((RouteSpec("/"), "a"))
    route = router.lookup(b"h", b"/")
    assert route is not None
    route.counts[1] += 5
    router.set_routes([(RouteSpec("/"), pools["a"]), (RouteSpec("/b"), Pool("b"))])
    assert matched(router, "h", "/b") == "b"
    again = router.lookup(b"h", b"/")
    assert again is not None and again.counts[1] == 5
    assert {p.name for p in router.pools()} == {"a", "b"}


async def test_a_pool_told_nothing_can_come_answers_waiting_requests_at_once() -> None:
    pool = Pool("web")
    assert pool.when_empty is WhenEmpty.QUEUE
    waiting = asyncio.ensure_future(pool.wait_ready(30.0))
    await asyncio.sleep(0)
    assert pool.queued == 1
    pool.set_when_empty(WhenEmpty.FAIL, "service 'web' failed: boom")
    async with asyncio.timeout(1.0):
        assert await waiting is False
    assert (pool.empty_reason, pool.queued) == ("service 'web' failed: boom", 0)
    # Back to queueing when instances are on their way again.
    pool.set_when_empty(WhenEmpty.QUEUE)
    pool.add("web.1", "127.0.0.1", 1)
    pool.set_ready("web.1", True)
    assert await pool.wait_ready(0.1) is True
