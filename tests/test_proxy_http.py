"""HTTP/1.1 through the proxy with real backends and real clients (aiohttp and raw sockets).

Every scenario runs on both event loops the daemon may use (asyncio and uvloop).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest
import yarl

from config.model import RouteSpec
from tests.test_proxy_support import (
    Runner,
    body_json,
    make_pool,
    raw_exchange,
    read_response,
    running_backend,
    running_proxy,
    running_raw_backend,
    wait_until,
)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_every_method(run: Runner, method: str) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s:
                data = b"payload" if method in ("POST", "PUT", "PATCH") else None
                async with s.request(method, f"{p.url}/echo", data=data) as r:
                    assert r.status == 200
                    assert r.headers["X-Backend"] == "b1"
                    if method == "HEAD":
                        assert await r.read() == b""
                        assert int(r.headers["Content-Length"]) > 0
                    else:
                        echo = await r.json()
                        assert echo["method"] == method
                        assert echo["body_len"] == (7 if data else 0)

    run(scenario())


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 7])
def test_bodies_both_ways(run: Runner, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{p.url}/echo", data=io.BytesIO(body)) as r:
                    echo = await r.json()
                assert echo["body_len"] == size
                assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
                async with s.get(f"{p.url}/stream?n=3&size={size}") as r:
                    got = await r.read()
                assert len(got) == 3 * size

    run(scenario())


def test_chunked_upload_is_streamed_and_forwarded_chunked(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            pieces = [b"alpha-", b"b", b"", b"gamma" * 10000]

            async def gen() -> AsyncIterator[bytes]:
                for piece in pieces:
                    yield piece

            async with aiohttp.ClientSession() as s:
                async with s.post(f"{p.url}/echo", data=gen()) as r:
                    echo = await r.json()
            whole = b"".join(pieces)
            assert echo["chunked"] is True
            assert echo["body_sha256"] == hashlib.sha256(whole).hexdigest()

    run(scenario())


def test_upload_reaches_backend_before_the_client_finishes(run: Runner) -> None:
    # The client sends the rest only after the backend got the first bytes: a proxy that
    # buffered whole bodies would deadlock here.
    async def scenario() -> None:
        got_first = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            first = await reader.readuntil(b"\r\n")  # chunk size line
            assert first.strip() == b"5"
            got_first.set()
            rest = await reader.readuntil(b"0\r\n\r\n")
            assert b"world" in rest
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        async with running_raw_backend(handler) as addr, running_proxy(make_pool([addr])) as p:

            async def gen() -> AsyncIterator[bytes]:
                yield b"hello"
                await got_first.wait()
                yield b"world"

            async with aiohttp.ClientSession() as s:
                async with s.post(p.url + "/", data=gen()) as r:
                    assert await r.read() == b"ok"

    run(scenario())


def test_server_sent_events_are_flushed_as_they_arrive(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s, s.get(f"{p.url}/sse") as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                assert await r.content.readuntil(b"\n\n") == b"data: first\n\n"
                b.state["sse_gate"].set()  # the backend sends the rest only now
                assert await r.content.read() == b"data: second\n\n"

    run(scenario())


def test_content_is_passed_through_undecoded(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession(auto_decompress=False) as s:
                async with s.get(f"{p.url}/gzip", headers={"Accept-Encoding": "gzip"}) as r:
                    raw = await r.read()
                    assert r.headers["Content-Encoding"] == "gzip"
                    assert int(r.headers["Content-Length"]) == len(raw)
            assert gzip.decompress(raw) == b"squeezed " * 100

    run(scenario())


def test_no_body_on_head_204_304_and_the_connection_stays_usable(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            reqs = (
                b"HEAD /stream?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"  # chunked GET, as HEAD
                b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(reqs)
            head_chunked = await read_response(reader, head_only=True)
            head_cl = await read_response(reader, head_only=True)
            r204 = await read_response(reader)
            r304 = await read_response(reader)
            after = await read_response(reader)
            writer.close()
            assert head_chunked.status == 200 and head_cl.status == 200
            assert int(head_cl.header("Content-Length") or 0) > 0
            assert (r204.status, r304.status) == (204, 304)
            assert r204.header("Content-Length") is None
            assert after.status == 200 and body_json(after)["raw_path"] == "/echo/after"

    run(scenario())


def test_query_strings_and_paths_are_byte_exact(run: Runner) -> None:
    target = b"/echo/a%2Fb/%7e/;p=1?x=1&y=%20+%2B&z=%zz&&empty=&dup=1&dup=2#"[:-1]

    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(
                p.port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            assert body_json(resp)["raw_path"] == target.decode()

    run(scenario())


def test_location_and_set_cookie_are_untouched(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(p.port, b"GET /cookies HTTP/1.1\r\nHost: t\r\n\r\n")
            assert resp.status == 302
            assert resp.header("Location") == "http://elsewhere.example/a%20b?x=1&y=%2F"
            assert resp.all("Set-Cookie") == [
                "a=1; Path=/; HttpOnly",
                "b=two words; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
            ]

    run(scenario())


def test_expect_100_continue(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            interim = await read_response(reader)
            assert interim.status == 100
            writer.write(b"hello")
            final = await read_response(reader)
            writer.close()
            assert final.status == 200 and body_json(final)["body_len"] == 5

    run(scenario())


def test_expect_100_continue_rejected_early_by_the_proxy(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b]), max_body_size=10) as p:
            (resp,) = await raw_exchange(
                p.port,
                b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
                b"Expect: 100-continue\r\n\r\n",
            )
            assert resp.status == 413 and resp.header("Server") == "corral"
            assert "seen" not in b.state

    run(scenario())


def test_routes_by_host_and_path_with_and_without_strip_prefix(run: Runner) -> None:
    async def scenario() -> None:
        async with (
            running_backend("web") as web,
            running_backend("api") as api,
            running_backend("admin") as admin,
        ):
            routes = [
                (RouteSpec("/"), make_pool([web], "web")),
                (RouteSpec("/api", strip_prefix=True), make_pool([api], "api")),
                (RouteSpec("/", host="admin.localhost"), make_pool([admin], "admin")),
            ]
            async with running_proxy(routes) as p, aiohttp.ClientSession() as s:

                async def who(path: str, host: str = "shop.localhost") -> tuple[str, str]:
                    url = yarl.URL(p.url + path, encoded=True)
                    async with s.get(url, headers={"Host": host}) as r:
                        echo = await r.json()
                        return echo["backend"], echo["raw_path"]

                assert await who("/echo/a?x=1") == ("web", "/echo/a?x=1")
                assert await who("/api/echo/b?x=%2F") == ("api", "/echo/b?x=%2F")
                assert await who("/api") == ("api", "/")
                assert await who("/apix") == ("web", "/apix")
                assert await who("/api/x", "admin.localhost:80") == ("admin", "/api/x")

    run(scenario())


def test_unrouted_request_is_404_from_the_proxy(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b:
            routes = [(RouteSpec("/api"), make_pool([b]))]
            async with running_proxy(routes) as p:
                (resp,) = await raw_exchange(p.port, b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n")
                assert resp.status == 404 and resp.header("Server") == "corral"
                assert b"no route" in resp.body

    run(scenario())


def test_slow_client_pauses_the_backend_instead_of_buffering(run: Runner) -> None:
    size = 32 << 20

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"z" * (1 << 20)
        for _ in range(size >> 20):
            writer.write(chunk)
            await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(big) as addr, running_proxy(make_pool([addr])) as p:
            reader, writer = await asyncio.open_connection(p.host, p.port, limit=1 << 16)
            transport = cast(asyncio.Transport, writer.transport)
            transport.pause_reading()  # a client that does not read (yet)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            (client,) = p.server._ctx.clients

            def upstream_paused() -> bool:
                ex = client.active
                return ex is not None and ex.conn is not None and ex.conn.read_paused

            await wait_until(upstream_paused, what="proxy pausing the backend")
            assert client.transport is not None
            assert client.transport.get_write_buffer_size() < 8 << 20
            transport.resume_reading()
            resp = await read_response(reader)
            assert len(resp.body) == size
            writer.close()

    run(scenario())


def test_slow_backend_pauses_the_client_instead_of_buffering(run: Runner) -> None:
    size = 32 << 20
    release = asyncio.Event()

    async def sluggish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        await release.wait()
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        got = 0
        while got < size:
            got += len(await reader.read(1 << 20))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
        await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(sluggish) as addr, running_proxy(make_pool([addr])) as p:
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            sender = asyncio.create_task(_send_zeros(writer, size))
            await wait_until(lambda: any(c.paused for c in p.server._ctx.clients), what="pause")
            assert not sender.done()  # the proxy stopped reading: the client is held back
            release.set()
            await sender
            resp = await read_response(reader)
            assert resp.body == str(size).encode()
            writer.close()

    run(scenario())


async def _send_zeros(writer: asyncio.StreamWriter, size: int) -> None:
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        writer.write(chunk)
        await writer.drain()
