"""WebSocket (Upgrade) proxying: a raw byte tunnel after the backend's 101."""

from __future__ import annotations

import asyncio

import aiohttp

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


def test_websocket_echo_both_directions(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s, s.ws_connect(p.url + "/ws") as ws:
                await ws.send_str("hello")
                assert await ws.receive_str() == "b1:hello"
                big = bytes(range(256)) * 4096  # 1 MiB, several frames' worth of TCP reads
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big
                for i in range(50):
                    await ws.send_str(str(i))
                assert [await ws.receive_str() for _ in range(50)] == [f"b1:{i}" for i in range(50)]
                assert p.pool.snapshot()[0]["in_flight"] == 1  # a tunnel counts as in flight
            await wait_until(lambda: p.pool.snapshot()[0]["in_flight"] == 0, what="tunnel end")

    run(scenario())


def test_close_code_from_the_backend_reaches_the_client(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s, s.ws_connect(p.url + "/ws") as ws:
                await ws.send_str("close:4001")
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert msg.data == 4001 and msg.extra == "bye"

    run(scenario())


def test_close_code_from_the_client_reaches_the_backend(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s, s.ws_connect(p.url + "/ws") as ws:
                await ws.send_str("ping")
                assert await ws.receive_str() == "b1:ping"
                await ws.close(code=4002, message=b"client done")
            await wait_until(lambda: b.state.get("ws_close_code") == 4002, what="close code")

    run(scenario())


def test_drain_waits_for_open_websockets(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            async with aiohttp.ClientSession() as s, s.ws_connect(p.url + "/ws") as ws:
                drain = asyncio.create_task(p.pool.drain(b.key, timeout=30.0))
                await ws.send_str("still here")
                assert await ws.receive_str() == "b1:still here"
                assert not drain.done()
                await ws.close()
            async with asyncio.timeout(5.0):
                await drain
            assert p.pool.snapshot() == []

    run(scenario())


def test_refused_upgrade_is_an_ordinary_response_and_the_connection_closes(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend() as b, running_proxy(make_pool([b])) as p:
            (resp,) = await raw_exchange(
                p.port,
                b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            assert resp.status == 200 and resp.header("Connection") == "close"

    run(scenario())


def test_generic_upgrade_tunnel_with_early_client_bytes(run: Runner) -> None:
    # A made-up protocol: the client speaks first, right behind its request head.
    async def upgrader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request_head(reader)
        assert b"upgrade: custom/1" in head.lower() and b"connection: upgrade" in head.lower()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: custom/1\r\nConnection: Upgrade\r\n\r\n"
            b"server-hello;"
        )
        while line := await reader.readline():
            writer.write(b"echo:" + line)
            await writer.drain()

    async def scenario() -> None:
        async with running_raw_backend(upgrader) as addr, running_proxy(make_pool([addr])) as p:
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(
                b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: custom/1\r\n\r\n"
                b"early\n"
            )
            resp = await read_response(reader, head_only=True)
            assert resp.status == 101 and resp.header("Upgrade") == "custom/1"
            assert await reader.readexactly(len(b"server-hello;")) == b"server-hello;"
            assert await reader.readline() == b"echo:early\n"
            writer.write(b"later\n")
            assert await reader.readline() == b"echo:later\n"
            writer.write_eof()  # half-close travels through the tunnel
            assert await reader.read() == b""
            writer.close()

    run(scenario())
