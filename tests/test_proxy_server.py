"""The server around the fast path: balancing end to end, metrics, access log, stop, reload,
and the standalone entry point."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import aiohttp
import pytest

from config.model import Balance, HashKey, ProxySpec, RouteSpec
from proxy.pool import Pool
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.standalone import run_standalone
from tests.test_proxy_load import Load
from tests.test_proxy_support import (
    Runner,
    make_pool,
    running_backend,
    running_proxy,
    wait_until,
)


@pytest.mark.parametrize(
    ("balance", "weights", "expected"),
    [
        (Balance.ROUND_ROBIN, [1, 1, 1], {"a": 30, "b": 30, "c": 30}),
        (Balance.ROUND_ROBIN, [3, 1, 2], {"a": 45, "b": 15, "c": 30}),
        (Balance.LEAST_CONN, [1, 1, 1], {"a": 30, "b": 30, "c": 30}),
        (Balance.RANDOM, [1, 1, 1], None),
        (Balance.P2C, [1, 1, 1], None),
    ],
)
def test_distribution_through_the_proxy(
    run: Runner, balance: Balance, weights: list[int], expected: dict[str, int] | None
) -> None:
    async def scenario() -> None:
        async with (
            running_backend("a") as a,
            running_backend("b") as b,
            running_backend("c") as c,
        ):
            pool = make_pool([a, b, c], balance=balance, weights=weights)
            async with running_proxy(pool) as p, aiohttp.ClientSession() as s:
                got: Counter[str] = Counter()
                for _ in range(90):
                    async with s.get(p.url + "/echo") as r:
                        got[r.headers["X-Backend"]] += 1
                if expected is not None:
                    assert got == expected
                else:
                    assert set(got) == {"a", "b", "c"} and min(got.values()) >= 10, got

    run(scenario())


@pytest.mark.parametrize(
    ("hash_key", "headers"),
    [
        (HashKey("header", "X-User"), lambda i: {"X-User": f"user-{i}"}),
        (HashKey("cookie", "session"), lambda i: {"Cookie": f"theme=dark; session=s{i}"}),
    ],
)
def test_hash_balancing_is_sticky_and_survives_pool_changes(
    run: Runner, hash_key: HashKey, headers: Callable[[int], dict[str, str]]
) -> None:
    async def scenario() -> None:
        async with (
            running_backend("a") as a,
            running_backend("b") as b,
            running_backend("c") as c,
        ):
            pool = make_pool([a, b, c], balance=Balance.HASH, hash_key=hash_key)
            async with running_proxy(pool) as p, aiohttp.ClientSession() as s:

                async def owners() -> dict[int, str]:
                    out = {}
                    for i in range(60):
                        async with s.get(p.url + "/echo", headers=headers(i)) as r:
                            out[i] = r.headers["X-Backend"]
                    return out

                first = await owners()
                assert first == await owners()  # sticky
                assert set(first.values()) == {"a", "b", "c"}
                pool.remove("b")
                after = await owners()
                assert all(after[i] == first[i] for i in first if first[i] != "b")

    run(scenario())


def test_hash_on_client_ip(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend("a") as a, running_backend("b") as b:
            pool = make_pool([a, b], balance=Balance.HASH)
            async with running_proxy(pool) as p, aiohttp.ClientSession() as s:
                seen = set()
                for _ in range(10):
                    async with s.get(p.url + "/echo") as r:
                        seen.add(r.headers["X-Backend"])
                assert len(seen) == 1  # one client IP → one backend

    run(scenario())


def test_metrics(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend("a") as a:
            routes = [(RouteSpec("/", host="shop.local"), make_pool([a], "shop"))]
            async with running_proxy(routes) as p, aiohttp.ClientSession() as s:
                for path in ("/echo", "/echo", "/status/500"):
                    async with s.get(p.url + path, headers={"Host": "shop.local"}) as r:
                        await r.read()
                async with s.get(p.url + "/", headers={"Host": "nowhere"}) as r:
                    assert r.status == 404
                text = p.server.metrics()
        labels = 'pool="shop",backend="a",addr="127.0.0.1:'
        assert "# TYPE corral_proxy_backend_requests_total counter" in text
        assert any(
            line.startswith(f"corral_proxy_backend_requests_total{{{labels}")
            and line.endswith(" 3")
            for line in text.splitlines()
        )
        assert "corral_proxy_backend_in_flight{" in text
        assert "corral_proxy_backend_latency_seconds_bucket{" in text and 'le="+Inf"} 3' in text
        assert "corral_proxy_backend_latency_seconds_count{" in text
        assert (
            'corral_proxy_route_responses_total{pool="shop",host="shop.local",path="/",code="2xx"} 2'
            in text
        )
        assert 'code="5xx"} 1' in text
        assert 'corral_proxy_errors_total{status="404"} 1' in text
        # The counters with no event yet have their series already, at 0 (rate() needs it).
        assert 'corral_proxy_errors_total{status="502"} 0' in text
        for kind in ("header", "body", "send"):
            assert f'corral_proxy_client_timeouts_total{{kind="{kind}"}} 0' in text

    run(scenario())


def test_access_log_one_line_per_request(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b]), access_log=True) as p:
            async with aiohttp.ClientSession() as s:
                async with s.get(p.url + "/echo?q=1") as r:
                    await r.read()
                async with s.post(p.url + "/status/201", data=b"x") as r:
                    await r.read()

    with caplog.at_level(logging.INFO, logger="proxy.access"):
        run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert len(lines) == 2
    assert lines[0].startswith('127.0.0.1 "GET /echo?q=1 HTTP/1.1" 200 ')
    assert lines[1].startswith('127.0.0.1 "POST /status/201 HTTP/1.1" 201 ')


def test_no_access_log_by_default(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s, s.get(p.url + "/echo") as r:
                await r.read()

    with caplog.at_level(logging.INFO, logger="proxy.access"):
        run(scenario())
    assert not [r for r in caplog.records if r.name == "proxy.access"]


def test_stop_lets_in_flight_requests_finish_and_refuses_new_ones(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b:
            router = Router()
            router.set_routes([(RouteSpec(), make_pool([b]))])
            server = ProxyServer(ProxySpec(listen=(("127.0.0.1", 0),)), router)
            ((host, port),) = await server.start()
            async with aiohttp.ClientSession() as s:
                req = asyncio.create_task(s.get(f"http://{host}:{port}/hold"))
                await wait_until(lambda: b.state.get("held") == 1, what="request at backend")
                stop = asyncio.create_task(server.stop(grace=10.0))
                await asyncio.sleep(0)
                with pytest.raises(aiohttp.ClientConnectionError):
                    await s.get(f"http://{host}:{port}/echo")
                assert not stop.done()
                b.state["hold_gate"].set()
                r = await req
                assert r.status == 200 and await r.text() == "held by b1\n"
                assert r.headers["Connection"] == "close"
                await stop

    run(scenario())


def test_a_request_already_on_its_way_over_an_idle_connection_is_answered_at_stop(
    run: Runner,
) -> None:
    async def scenario() -> None:
        async with running_backend() as b:
            router = Router()
            router.set_routes([(RouteSpec(), make_pool([b]))])
            server = ProxyServer(ProxySpec(listen=(("127.0.0.1", 0),)), router)
            ((host, port),) = await server.start()
            reader, writer = await asyncio.open_connection(host, port)
            request = b"GET /echo HTTP/1.1\r\nHost: test\r\n\r\n"
            writer.write(request)
            first = await reader.readuntil(b"\r\n\r\n")
            assert first.startswith(b"HTTP/1.1 200 ")
            length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            # The connection is idle and kept alive; the next request is sent just as the
            # proxy begins to stop. Closing idle connections at once would reset it unanswered.
            stop = asyncio.create_task(server.stop(grace=10.0))
            await wait_until(lambda: _refused(host, port), what="the listener closed")
            writer.write(request)
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                rest = await reader.read()
            writer.close()
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"connection: close" in head.lower()
            assert len(rest) == int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await stop

    run(scenario())


def test_a_connection_waiting_in_the_backlog_is_answered_at_stop(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b:
            router = Router()
            router.set_routes([(RouteSpec(), make_pool([b]))])
            spec = ProxySpec(listen=(("127.0.0.1", 0),), max_connections=1)
            server = ProxyServer(spec, router)
            ((host, port),) = await server.start()
            # One connection holds the only slot, so the next waits in the listen backlog:
            # the kernel completed its handshake and holds its request, unaccepted.
            _, held_w = await asyncio.open_connection(host, port)
            await wait_until(lambda: server._ctx.full, what="the proxy to stop accepting")
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: test\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(10):
                await server.stop(grace=10.0)
                head = await reader.readuntil(b"\r\n\r\n")
                rest = await reader.read()
            for w in (writer, held_w):
                w.close()
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"connection: close" in head.lower()
            assert len(rest) == int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])

    run(scenario())


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_is_bounded_by_grace(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, aiohttp.ClientSession() as s:
            router = Router()
            router.set_routes([(RouteSpec(), make_pool([b]))])
            server = ProxyServer(ProxySpec(listen=(("127.0.0.1", 0),)), router)
            ((host, port),) = await server.start()
            req = asyncio.create_task(s.get(f"http://{host}:{port}/hold"))
            await wait_until(lambda: b.state.get("held") == 1, what="request at backend")
            async with asyncio.timeout(5.0):
                await server.stop(grace=0.1)
            with pytest.raises(aiohttp.ClientError):
                await req

    run(scenario())


def test_update_spec_applies_new_timeouts(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            p.server.update_spec(replace(p.server.spec, read_timeout=0.2))
            async with aiohttp.ClientSession() as s, s.get(p.url + "/hold") as r:
                assert r.status == 504

    run(scenario())


def test_route_swaps_under_load_drop_nothing(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend("a") as a, running_backend("b") as b:
            pa, pb = make_pool([a], "a"), make_pool([b], "b")
            async with running_proxy(pa) as p:
                load = Load(p.url + "/echo")
                async with load.running(clients=8):
                    for i in range(20):
                        p.router.set_routes([(RouteSpec(), pb if i % 2 else pa)])
                        await load.until(10)
                assert load.failures == []
                assert set(load.by_backend) == {"a", "b"}

    run(scenario())


def test_standalone_serves_all_backends_until_shutdown(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend("a") as a, running_backend("b") as b:
            shutdown = asyncio.Event()
            bound: asyncio.Future[list[tuple[str, int]]] = (
                asyncio.get_running_loop().create_future()
            )
            task = asyncio.create_task(
                run_standalone(
                    [("127.0.0.1", 0)],
                    [(a.host, a.port), (b.host, b.port)],
                    Balance.ROUND_ROBIN,
                    shutdown=shutdown,
                    started=bound.set_result,
                )
            )
            ((host, port),) = await bound
            async with aiohttp.ClientSession() as s:
                seen = set()
                for _ in range(4):
                    async with s.get(f"http://{host}:{port}/echo") as r:
                        seen.add(r.headers["X-Backend"])
                assert seen == {"a", "b"}
            shutdown.set()
            await task
            with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
                pass

    run(scenario())


def test_standalone_requires_listen_and_backends(run: Runner) -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="backend"):
            await run_standalone([("127.0.0.1", 0)], [], shutdown=asyncio.Event())
        with pytest.raises(ValueError, match="listen"):
            await run_standalone([], [("127.0.0.1", 1)], shutdown=asyncio.Event())

    run(scenario())


def test_start_reports_every_bound_address(run: Runner) -> None:
    async def scenario() -> None:
        router = Router()
        router.set_routes([(RouteSpec(), Pool("web"))])
        server = ProxyServer(ProxySpec(listen=(("127.0.0.1", 0), ("127.0.0.1", 0))), router)
        addrs = await server.start()
        try:
            assert len(addrs) == 2 and all(port > 0 for _, port in addrs)
            assert addrs[0] != addrs[1]
        finally:
            await server.stop()

    run(scenario())
