"""Headers and framing through the proxy: what is forwarded, stripped, rejected or re-framed.

Every scenario runs on both event loops the daemon may use (asyncio and uvloop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.test_proxy_support import (
    Runner,
    body_json,
    header_map,
    make_pool,
    raw_exchange,
    running_backend,
    running_proxy,
    running_raw_backend,
)


def test_hop_by_hop_request_headers_are_removed(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(
                p.port,
                b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Private\r\n"
                b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic x\r\n"
                b"TE: trailers\r\nProxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n",
            )
            seen = header_map(body_json(resp))
            for name in ("x-private", "keep-alive", "te", "proxy-connection"):
                assert name not in seen, name
            assert seen["x-end-to-end"] == ["kept"]
            # Not hop-by-hop for a proxy that never asks for credentials (issue 7.5).
            assert seen["proxy-authorization"] == ["Basic x"]
            assert seen.get("connection", ["keep-alive"]) == ["keep-alive"]  # aiohttp's own

    run(scenario())


def test_hop_by_hop_response_headers_are_removed(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=3\r\n"
            b"Proxy-Authenticate: Basic\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(handler) as addr, running_proxy(make_pool([addr])) as p:
            (resp,) = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            names = {k.lower() for k, _ in resp.headers}
            assert names.isdisjoint({"x-hop", "keep-alive", "proxy-authenticate", "connection"})
            assert resp.header("X-Kept") == "yes" and resp.body == b"ok"

    run(scenario())


def test_forwarded_headers_from_an_untrusted_peer_are_replaced(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(
                p.port,
                b"GET /echo HTTP/1.1\r\nHost: shop.local:8080\r\nX-Forwarded-For: 6.6.6.6\r\n"
                b"X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
                b"X-Forwarded-Host: evil\r\nAccept: */*\r\n\r\n",
            )
            seen = header_map(body_json(resp))
            assert seen["x-forwarded-for"] == ["127.0.0.1"]
            assert seen["x-forwarded-proto"] == ["http"]
            assert seen["x-forwarded-host"] == ["shop.local:8080"]
            assert seen["forwarded"] == ['for=127.0.0.1;host="shop.local:8080";proto=http']
            assert seen["host"] == ["shop.local:8080"]

    run(scenario())


def test_forwarded_headers_from_a_trusted_proxy_are_extended(run: Runner) -> None:
    import ipaddress

    async def scenario() -> None:
        trusted = (ipaddress.ip_network("127.0.0.0/8"),)
        async with (
            running_backend() as b,
            running_proxy(make_pool([b]), trusted_proxies=trusted) as p,
        ):
            (resp,) = await raw_exchange(
                p.port,
                b"GET /echo HTTP/1.1\r\nHost: shop.local\r\nX-Forwarded-For: 203.0.113.9\r\n"
                b"X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9;proto=https\r\n\r\n",
            )
            seen = header_map(body_json(resp))
            assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
            assert seen["x-forwarded-proto"] == ["https"]
            assert seen["forwarded"] == [
                "for=203.0.113.9;proto=https, for=127.0.0.1;host=shop.local;proto=http"
            ]

    run(scenario())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\nHost: t\n\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    ],
    ids=[
        "cl+te",
        "dup-cl",
        "dup-cl-same",
        "te-gzip",
        "bad-chunk",
        "two-hosts",
        "no-host",
        "obs-fold",
        "bare-lf",
        "connect",
    ],
)
def test_ambiguous_or_malformed_requests_are_rejected_not_forwarded(
    run: Runner, request_bytes: bytes, status: int
) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(p.port, request_bytes)
            assert resp.status == status
            assert resp.header("Server") == "corral" and resp.header("Via") == "1.1 corral"
            assert resp.header("Connection") == "close"
            assert "seen" not in b.state  # nothing reached the backend

    run(scenario())


def test_header_and_target_size_limits(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b]), max_header_size=2048) as p:
            (big,) = await raw_exchange(
                p.port, b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
            )
            assert big.status == 431
            (long_url,) = await raw_exchange(
                p.port, b"GET /echo?" + b"q" * 4000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            assert long_url.status == 414
            (ok,) = await raw_exchange(
                p.port, b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 1000 + b"\r\n\r\n"
            )
            assert ok.status == 200

    run(scenario())


def test_max_body_size(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b]), max_body_size=1000) as p:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{p.url}/echo", data=b"x" * 1000) as r:
                    assert r.status == 200
                async with s.post(f"{p.url}/echo", data=b"x" * 1001) as r:
                    assert r.status == 413 and r.headers["Server"] == "corral"

                async def gen() -> AsyncIterator[bytes]:
                    for _ in range(20):
                        yield b"y" * 100

                async with s.post(f"{p.url}/upload", data=gen()) as r:
                    assert r.status == 413

    run(scenario())


def test_pipelined_requests_are_answered_in_order(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            reqs = (
                b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5))
                + b"POST /echo/5 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            )
            resps = await raw_exchange(p.port, reqs, responses=6)
            assert [body_json(r)["raw_path"] for r in resps] == [f"/echo/{i}" for i in range(6)]
            assert body_json(resps[5])["body_len"] == 3

    run(scenario())


def test_http10_clients(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            # Chunked upstream → close-delimited for a 1.0 client.
            (streamed,) = await raw_exchange(p.port, b"GET /stream?n=3 HTTP/1.0\r\n\r\n")
            assert streamed.header("Transfer-Encoding") is None
            assert streamed.body == b"A" * 10 + b"B" * 10 + b"C" * 10
            # Keep-alive when asked for and the length is known.
            reqs = b"GET /echo/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2
            first, second = await raw_exchange(p.port, reqs, responses=2)
            assert first.header("Connection") == "keep-alive"
            assert body_json(second)["raw_path"] == "/echo/1"

    run(scenario())


def test_absolute_form_target(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(
                p.port, b"GET http://shop.local:81/echo/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n"
            )
            echo = body_json(resp)
            assert echo["raw_path"] == "/echo/x?y=1"
            assert header_map(echo)["host"] == ["shop.local:81"]

    run(scenario())


def test_close_delimited_and_chunked_with_trailers_upstream(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/te-only" in head:  # a transfer coding without chunked: body runs to the close
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity-ish\r\n\r\nraw bytes")
            await writer.drain()
            writer.close()
            return
        if b"/trailers" in head:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with running_raw_backend(handler) as addr, running_proxy(make_pool([addr])) as p:
            reqs = b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /trailers HTTP/1.1\r\nHost: t\r\n\r\n"
            first, second = await raw_exchange(p.port, reqs, responses=2)
            assert first.header("Transfer-Encoding") == "chunked"  # re-framed for keep-alive
            assert first.body == b"until close"
            assert second.body == b"abcde"
            (third,) = await raw_exchange(p.port, b"GET /te-only HTTP/1.1\r\nHost: t\r\n\r\n")
            assert third.header("Transfer-Encoding") == "identity-ish, chunked"
            assert third.body == b"raw bytes"

    run(scenario())
