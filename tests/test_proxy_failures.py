"""Failure paths: 502 / 503 / 504, retries, stale keep-alive connections, passive ejection."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from config.model import Balance
from proxy.pool import Pool
from tests.test_proxy_support import (
    Runner,
    make_pool,
    raw_exchange,
    read_request_head,
    read_response,
    running_backend,
    running_proxy,
    running_raw_backend,
    wait_until,
)


def dead_address() -> tuple[str, int]:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return "127.0.0.1", port


def test_unreachable_backend_is_502_from_the_proxy(run: Runner) -> None:
    async def scenario() -> None:
        async with running_proxy(make_pool([dead_address()]), retries=1) as p:
            async with aiohttp.ClientSession() as s, s.get(p.url + "/x") as r:
                body = await r.text()
                assert r.status == 502
                assert r.headers["Server"] == "corral" and r.headers["Via"] == "1.1 corral"
                assert "cannot connect" in body
            assert p.pool.snapshot()[0]["failures"] == 2  # first try + one retry

    run(scenario())


def test_no_ready_backend_is_503_after_queue_timeout(run: Runner) -> None:
    async def scenario() -> None:
        pool = Pool("web")
        pool.add("web.1", "127.0.0.1", 1)  # never ready
        async with running_proxy(pool, queue_timeout=0.2) as p:
            async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
                assert r.status == 503 and r.headers["Server"] == "corral"
                assert "no ready backend" in await r.text()

    run(scenario())


def test_queued_request_goes_out_as_soon_as_a_backend_is_ready(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b:
            pool = Pool("web")
            pool.add(b.key, b.host, b.port)
            async with running_proxy(pool, queue_timeout=30.0) as p:
                async with aiohttp.ClientSession() as s:
                    req = asyncio.create_task(s.get(p.url + "/echo"))
                    await wait_until(lambda: pool.queued == 1, what="request queued")
                    assert not req.done()
                    pool.set_ready(b.key, True)
                    async with asyncio.timeout(2.0):  # far below queue_timeout
                        r = await req
                    assert r.status == 200
                    r.release()

    run(scenario())


def test_upstream_read_timeout_is_504(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b]), read_timeout=0.3) as p:
            async with aiohttp.ClientSession() as s, s.get(p.url + "/hold") as r:
                assert r.status == 504 and r.headers["Server"] == "corral"
                assert "no response" in await r.text()
                # The request was not retried elsewhere: a timeout is not "nothing was sent".
            assert p.pool.snapshot()[0]["failures"] == 1

    run(scenario())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_refused_connection_is_retried_on_another_backend(run: Runner, method: str) -> None:
    # Nothing was sent, so even a POST may go elsewhere.
    async def scenario() -> None:
        async with running_backend() as good:
            pool = make_pool([dead_address(), good])
            async with running_proxy(pool, retries=2) as p, aiohttp.ClientSession() as s:
                for _ in range(6):
                    async with s.request(method, p.url + "/echo", data=b"body") as r:
                        assert r.status == 200
                        assert (await r.json())["body_len"] == 4

    run(scenario())


def test_consecutive_failures_eject_the_backend(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as good:
            pool = make_pool([dead_address(), good])
            async with (
                running_proxy(pool, eject_failures=2, eject_cooldown=60.0) as p,
                aiohttp.ClientSession() as s,
            ):
                for _ in range(20):
                    async with s.get(p.url + "/echo") as r:
                        assert r.status == 200
                dead = next(x for x in pool.snapshot() if x["key"] != good.key)
                assert dead["failures"] == 2  # then ejected: no more attempts on it
                assert dead["ejected_until"] is not None

    run(scenario())


def test_backend_dying_mid_request_is_retried_for_idempotent_methods(run: Runner) -> None:
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()  # RST, no response byte

    async def scenario() -> None:
        async with running_raw_backend(dies) as bad, running_backend() as good:
            pool = make_pool([bad, good], balance=Balance.ROUND_ROBIN)
            async with running_proxy(pool) as p, aiohttp.ClientSession() as s:
                for _ in range(4):
                    async with s.get(p.url + "/echo") as r:
                        assert r.status == 200
                # A POST already sent cannot be replayed: the failure is reported.
                statuses = []
                for _ in range(4):
                    async with s.post(p.url + "/echo", data=b"x") as r:
                        statuses.append(r.status)
                assert 502 in statuses and 200 in statuses

    run(scenario())


def test_stale_pooled_keep_alive_connection_is_retried_transparently(run: Runner) -> None:
    # The backend answers once per connection and then closes that connection the moment the
    # next request arrives: the race of a keep-alive timeout hitting a reused connection.
    connections = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: drop it unanswered

    async def scenario() -> None:
        async with running_raw_backend(once) as addr:
            pool = make_pool([addr])
            async with running_proxy(pool, retries=0) as p, aiohttp.ClientSession() as s:
                for _ in range(3):
                    async with s.get(p.url + "/") as r:
                        assert (r.status, await r.read()) == (200, b"ok")
                assert connections == 3
                assert pool.snapshot()[0]["failures"] == 0  # a stale connection is no failure

    run(scenario())


def test_response_cut_short_aborts_the_client_connection(run: Runner) -> None:
    async def truncates(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(truncates) as addr, running_proxy(make_pool([addr])) as p:
            async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()

    run(scenario())


def test_malformed_response_is_502(run: Runner) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx")
        await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(garbage) as addr, running_proxy(make_pool([addr])) as p:
            (resp,) = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert resp.status == 502 and resp.header("Server") == "corral"

    run(scenario())


def test_unsolicited_101_is_502(run: Runner) -> None:
    async def switches(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )
        await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(switches) as addr, running_proxy(make_pool([addr])) as p:
            (resp,) = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert resp.status == 502

    run(scenario())


def test_client_leaving_releases_the_backend(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            _, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            await wait_until(lambda: b.state.get("held") == 1, what="request at backend")
            assert p.pool.snapshot()[0]["in_flight"] == 1
            writer.close()
            await wait_until(lambda: p.pool.snapshot()[0]["in_flight"] == 0, what="release")

    run(scenario())


def test_early_response_to_an_unfinished_upload_is_delivered_then_closed(run: Runner) -> None:
    # The backend refuses after the head, without reading the body (as a 413 or 401 would).
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        await reader.read()  # never reads the body on purpose, just waits for the close

    async def scenario() -> None:
        async with running_raw_backend(refuses) as addr, running_proxy(make_pool([addr])) as p:
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
            writer.write(b"x" * 1000)  # ... and the client keeps sending for a while
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (413, b"nope")
            assert resp.header("Connection") == "close"
            writer.write(b"y" * 5000)  # the proxy still swallows the rest politely
            await writer.drain()
            writer.close()

    run(scenario())


def test_expect_continue_refused_by_the_backend(run: Runner) -> None:
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request_head(reader)
        assert b"expect: 100-continue" in head.lower()
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with running_raw_backend(refuses) as addr, running_proxy(make_pool([addr])) as p:
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(
                b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            resp = await read_response(reader)
            assert resp.status == 401 and resp.header("Connection") == "close"
            writer.close()

    run(scenario())


def test_idle_upstream_connections_are_closed_before_the_idle_timeout(run: Runner) -> None:
    connections = 0

    async def keeps_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(keeps_alive) as addr:
            pool = make_pool([addr])
            async with running_proxy(pool, idle_timeout=0.2) as p, aiohttp.ClientSession() as s:
                for _ in range(3):
                    async with s.get(p.url + "/") as r:
                        assert await r.read() == b"ok"
                assert connections == 1  # reused while fresh
                assert pool.snapshot()[0]["idle_connections"] == 1
                await wait_until(lambda: pool.snapshot()[0]["idle_connections"] == 0, 5, "sweep")
                async with s.get(p.url + "/") as r:
                    assert await r.read() == b"ok"
                assert connections == 2

    run(scenario())
