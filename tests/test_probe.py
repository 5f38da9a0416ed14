"""Probes against real servers on port 0 and real commands."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from config.model import HealthKind, HealthSpec
from supervisor.ports import free_port
from supervisor.probe import ProbeResult, port_open, probe

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def server() -> AsyncIterator[int]:
    """An aiohttp server: /ok → 200, /moved → 302, /sick → 503, /hang never answers."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async def sick(request: web.Request) -> web.Response:
        return web.Response(status=503, text="db down")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine " * 10000)  # a body the probe never reads

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/sick", sick)
    app.router.add_get("/moved", moved)
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield port
    release.set()
    await runner.cleanup()


def http(path: str, timeout: float = 1.0) -> HealthSpec:
    return HealthSpec(kind=HealthKind.HTTP, path=path, timeout=timeout)


async def run(spec: HealthSpec, port: int | None, tmp_path: Path) -> ProbeResult:
    return await probe(spec, "127.0.0.1", port, cwd=tmp_path, env=dict(os.environ))


async def test_http_statuses(server: int, tmp_path: Path) -> None:
    assert await run(http("/ok"), server, tmp_path) == ProbeResult(True, "HTTP 200")
    assert await run(http("/moved"), server, tmp_path) == ProbeResult(True, "HTTP 302")
    assert await run(http("/sick"), server, tmp_path) == ProbeResult(False, "HTTP 503")
    assert await run(http("/nope"), server, tmp_path) == ProbeResult(False, "HTTP 404")


async def test_http_hanging_times_out(server: int, tmp_path: Path) -> None:
    started = time.monotonic()
    result = await run(http("/hang", timeout=0.3), server, tmp_path)
    assert result == ProbeResult(False, "timed out after 0.3s")
    assert time.monotonic() - started < 2


async def test_closed_port(tmp_path: Path) -> None:
    port = free_port()
    assert await run(http("/"), port, tmp_path) == ProbeResult(False, "connection refused")
    tcp = HealthSpec(kind=HealthKind.TCP)
    assert await run(tcp, port, tmp_path) == ProbeResult(False, "connection refused")
    assert not await port_open("127.0.0.1", port, 1.0)


async def test_tcp_and_port_open(server: int, tmp_path: Path) -> None:
    tcp = HealthSpec(kind=HealthKind.TCP)
    assert await run(tcp, server, tmp_path) == ProbeResult(True, "port open")
    assert await port_open("127.0.0.1", server, 1.0)


async def test_no_port(tmp_path: Path) -> None:
    result = await run(http("/"), None, tmp_path)
    assert not result.ok and "port" in result.detail


async def test_not_http(tmp_path: Path) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await run(http("/"), port, tmp_path)
    assert not result.ok and result.detail.startswith("not an HTTP response")


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (b"", "connection closed before the status line"),
        (b"HTTP/1.1 200", "connection closed before the status line"),
        (b"x" * 20000, "status line too long"),
    ],
)
async def test_broken_status_lines(tmp_path: Path, reply: bytes, detail: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await run(http("/"), port, tmp_path)
    assert (result.ok, result.detail) == (False, detail)


def exec_spec(code: str, timeout: float = 1.0) -> HealthSpec:
    return HealthSpec(kind=HealthKind.EXEC, command=(sys.executable, "-c", code), timeout=timeout)


async def test_exec_exit_codes(tmp_path: Path) -> None:
    assert await run(exec_spec("pass"), None, tmp_path) == ProbeResult(True, "exit 0")
    failing = "import sys; sys.stderr.write('cache unreachable\\n'); sys.exit(3)"
    assert await run(exec_spec(failing), None, tmp_path) == ProbeResult(
        False, "exit 3: cache unreachable"
    )
    true = HealthSpec(kind=HealthKind.EXEC, command=("true",))
    false = HealthSpec(kind=HealthKind.EXEC, command=("false",))
    assert (await run(true, None, tmp_path)).ok
    assert await run(false, None, tmp_path) == ProbeResult(False, "exit 1")


async def test_exec_runs_in_cwd_with_env(tmp_path: Path) -> None:
    code = "import os, sys; sys.exit(0 if os.environ['X'] == 'y' and os.path.exists('here') else 1)"
    (tmp_path / "here").touch()
    spec = exec_spec(code)
    result = await probe(spec, "127.0.0.1", None, cwd=tmp_path, env={**os.environ, "X": "y"})
    assert result.ok


async def test_exec_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The check starts a grandchild and then hangs; both must die on the timeout.
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = await run(exec_spec(code, timeout=1.5), None, tmp_path)
    assert result == ProbeResult(False, "timed out after 1.5s")
    assert time.monotonic() - started < 5
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild):
        assert time.monotonic() < deadline, "grandchild survived the timeout"
        await asyncio.sleep(0.02)


async def test_exec_missing_command(tmp_path: Path) -> None:
    spec = HealthSpec(kind=HealthKind.EXEC, command=("corral-no-such-command",))
    result = await run(spec, None, tmp_path)
    assert not result.ok and result.detail.startswith("cannot run corral-no-such-command")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][0] != "Z"
    except FileNotFoundError:
        return False
