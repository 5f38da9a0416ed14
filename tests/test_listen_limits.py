"""The `[metrics]` and `[dashboard]` TCP listeners bound what a client can make the daemon hold:
a connection cap (past it they stop accepting), a deadline for each request head, an idle
keep-alive timeout and size limits — with real sockets against a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from supervisor.ports import free_port
from supervisor.tcpsite import TcpSite

from .conftest import running_daemon, wait_until, web_service, write_config
from .test_hostile import DAEMON_NOFILE, LowFdDaemon, closed_within, low_fd_daemon
from .test_proxy_support import raw_exchange, read_response

HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # never finished
BIG = 64 << 20  # more than loopback's socket buffers hold


async def _site(**limits: float) -> tuple[TcpSite, int]:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * BIG)

    app.router.add_get("/", hello)
    app.router.add_get("/big", big)
    site = TcpSite(app, "test", **limits)  # type: ignore[arg-type]
    _, port = await site.open(("127.0.0.1", 0), "[test] listen in test.toml")
    return site, port


async def test_a_trickled_head_is_closed_at_the_header_deadline() -> None:
    site, port = await _site(header_timeout=0.5, idle_timeout=60.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                for byte in HALF_HEAD * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)  # far inside any idle timeout

        trickler = asyncio.create_task(trickle())
        assert await closed_within(reader, 10) == b""
        trickler.cancel()
        assert time.monotonic() - started < 5  # the 0.5 s deadline, not the 60 s idle rule
        writer.close()
    finally:
        await site.close()


async def test_the_next_head_on_a_keep_alive_connection_has_its_own_deadline() -> None:
    site, port = await _site(header_timeout=0.5, idle_timeout=60.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"hello")
        writer.write(HALF_HEAD)  # the second request never finishes its head
        assert await closed_within(reader, 10) == b""
        writer.close()
    finally:
        await site.close()


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    site, port = await _site(header_timeout=60.0, idle_timeout=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).status == 200
        assert await closed_within(reader, 10) == b""
        writer.close()
    finally:
        await site.close()


async def test_a_client_that_stops_reading_is_closed_at_the_send_timeout() -> None:
    site, port = await _site(send_timeout=0.5, header_timeout=60.0, idle_timeout=60.0)
    try:
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
            await wait_until(lambda: site.connections == 1, timeout=20, what="the connection")
            await wait_until(lambda: site.connections == 0, timeout=20, what="the stalled close")
            client.settimeout(10)

            def drain() -> int:
                received = 0
                with contextlib.suppress(ConnectionResetError):
                    while chunk := client.recv(1 << 20):
                        received += len(chunk)
                return received

            assert await asyncio.to_thread(drain) < BIG  # cut, not completed
    finally:
        await site.close()


async def test_an_oversized_head_is_refused() -> None:
    site, port = await _site()
    try:
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        (response,) = await raw_exchange(port, big)
        assert response.status in (400, 431)
    finally:
        await site.close()


async def test_at_the_cap_the_listener_stops_accepting_and_resumes_after() -> None:
    site, port = await _site(max_connections=4)
    try:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        await asyncio.sleep(0.3)  # let the loop accept what it will
        assert site.connections == 4  # the other six wait in the kernel's backlog
        assert site.pauses == 1
        for _, writer in conns[:4]:
            writer.transport.abort()
        # The six queued clients are served now, with the answer they asked for.
        reader, writer = conns[4]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await read_response(reader)).status == 200
        for _, writer in conns[4:]:
            writer.transport.abort()
    finally:
        await site.close()


async def test_a_bad_host_fails_with_the_key_and_the_reason() -> None:
    from supervisor.errors import SupervisorError

    site = TcpSite(web.Application(), "metrics")
    with pytest.raises(SupervisorError) as info:
        await site.open(("nosuchhost.invalid", 9464), "[metrics] listen in /x/corral.toml")
    assert str(info.value).startswith(
        "metrics cannot listen on nosuchhost.invalid:9464 ([metrics] listen in /x/corral.toml): "
        "cannot resolve host 'nosuchhost.invalid'"
    )


# --- a real daemon ------------------------------------------------------------------------------------


async def test_a_daemons_listeners_close_unfinished_heads_at_the_deadline(tmp_path: Path) -> None:
    """The reviewer's 1000 half-open heads were still held after 80 s; now 10 s is the end."""
    metrics_port, dashboard_port = free_port(), free_port()
    path = write_config(
        tmp_path,
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        f'[dashboard]\nlisten = "127.0.0.1:{dashboard_port}"\n' + web_service("web"),
    )

    def held() -> int:
        """Server-side connections on the two ports (the daemon runs in this process)."""
        return sum(
            1
            for c in psutil.Process().net_connections("tcp")
            if c.laddr
            and c.laddr.port in (metrics_port, dashboard_port)
            and c.status == psutil.CONN_ESTABLISHED
        )

    async with running_daemon(path):
        conns = []
        for port in (metrics_port, dashboard_port):
            for _ in range(10):
                conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(HALF_HEAD)
                conns.append(conn)
        await wait_until(lambda: held() == 20, timeout=10, what="20 connections held")
        started = time.monotonic()
        for reader, _ in conns:
            assert await closed_within(reader, 30) == b""
        assert time.monotonic() - started < 25  # HEADER_TIMEOUT (10 s), with room for load
        await wait_until(lambda: held() == 0, timeout=10, what="every connection closed")
        for _, writer in conns:
            writer.close()


# --- a flood against a real daemon ------------------------------------------------------------------

FLOOD = 1500  # half-open heads per listener: more than the daemon's whole descriptor limit


def test_a_flood_of_half_open_heads_leaves_the_daemon_working(tmp_path: Path) -> None:
    """Finding 1: thousands of unfinished heads on /metrics' and the dashboard's ports."""
    proxy_port, metrics_port, dashboard_port = free_port(), free_port(), free_port()
    write_config(
        tmp_path,
        f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        f'[dashboard]\nlisten = "127.0.0.1:{dashboard_port}"\n' + web_service("web", instances=2),
    )

    async def flood(daemon: LowFdDaemon) -> dict[str, int]:
        pid = daemon.process.pid
        before = psutil.Process(pid).num_fds()
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for port in (metrics_port, dashboard_port):
            for _ in range(FLOOD):
                try:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                except OSError:  # the listen backlog is full: the kernel refuses the rest
                    break
                conn[1].write(HALF_HEAD)
                conns.append(conn)
        await asyncio.sleep(0.5)
        figures = {"opened": len(conns), "before": before}
        # During the flood (shorter than the 10 s head deadline, so nothing has been cut yet):
        # the daemon holds two capped sets, the control API, the proxy and health all work.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            figures["fds"] = max(figures.get("fds", 0), psutil.Process(pid).num_fds())
            assert daemon.states() == ["ready", "ready"]
            (resp,) = await raw_exchange(proxy_port, b"GET /during HTTP/1.1\r\nHost: t\r\n\r\n")
            assert resp.status == 200
            await asyncio.sleep(0.2)
        for _, writer in conns:
            writer.transport.abort()

        # Once the flood is gone, both listeners serve again.
        async def served(port: int, target: bytes) -> bool:
            try:
                (resp,) = await raw_exchange(
                    port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"
                )
            except (OSError, asyncio.IncompleteReadError):
                return False
            return resp.status == 200

        deadline = time.monotonic() + 30
        while not (await served(metrics_port, b"/metrics") and await served(dashboard_port, b"/")):
            assert time.monotonic() < deadline, "a listener does not accept after the flood"
            await asyncio.sleep(0.1)
        return figures

    with low_fd_daemon(tmp_path, client_fds=2 * FLOOD + 200) as daemon:
        figures = asyncio.run(flood(daemon))
    # Two listeners of 64 connections each, over what the daemon held before (plus slack for
    # the probes and the control requests made meanwhile).
    assert figures["fds"] <= figures["before"] + 2 * 64 + 32, figures
    text = daemon.log_path.read_text()
    assert "metrics listener: 64 connections open (its cap)" in text
    assert "dashboard listener: 64 connections open (its cap)" in text
    print(
        f"listen flood: {figures['opened']} half-open heads; daemon descriptors "
        f"{figures['before']} before, at most {figures['fds']} during (limit {DAEMON_NOFILE})"
    )
