"""Shared fixtures: a real daemon on a temp dir, polling helpers, leftover-process checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psutil
import pytest

import config
from supervisor.daemon import Daemon
from tests.test_proxy_support import LOOPS, Runner, runner

APPS = Path(__file__).parent / "apps"
PY = sys.executable


def web_command() -> str:
    return f'command = ["{PY}", "{APPS / "web.py"}"]'


def web_service(name: str, *, instances: int = 1, port: str = '"auto"', extra: str = "") -> str:
    """A [services.NAME] table running tests/apps/web.py with a fast HTTP health check."""
    return f"""
[services.{name}]
{web_command()}
instances = {instances}
port = {port}
venv = false
health = {{ http = "/healthz", interval = "200ms", timeout = "150ms", retries = 2 }}
backoff = {{ initial = "20ms", max = "200ms" }}
{extra}
"""


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = ""
) -> None:
    """Poll predicate until true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


async def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.0 GET on 127.0.0.1:port; (status, body)."""
    status, _, body = await http_exchange(port, path, timeout)
    return status, body


async def http_exchange(
    port: int, path: str = "/", timeout: float = 5.0, host: str = "test"
) -> tuple[int, str, bytes]:
    """One HTTP/1.0 GET on 127.0.0.1:port; (status, response head, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), body


async def get_json(port: int, path: str = "/") -> dict[str, object]:
    status, body = await http_get(port, path)
    assert status == 200, (status, body)
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def token_processes(token: str) -> list[psutil.Process]:
    """Live processes started by the daemon with this token (they carry it in their env)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and proc.environ().get("CORRAL_TOKEN") == token
            ):
                found.append(proc)
    return found


def consecutive_free_ports(count: int) -> int:
    """A base port with `count` free ports from it on (for services with a fixed port)."""
    from supervisor.ports import free_port

    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def sleeper_service(name: str, extra: str = "") -> str:
    """A [services.NAME] table whose instance sleeps (no port, no check)."""
    return f"""
[services.{name}]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
stop_timeout = "2s"
{extra}
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def running_daemon(path: Path) -> AsyncIterator[Daemon]:
    """Run a daemon for `path` in this loop; on exit stop it and assert nothing is left."""
    daemon = Daemon(config.load(path))
    started = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready=started.set))
    done, _ = await asyncio.wait(
        {task, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        task.result()  # raises the start-up error
    try:
        yield daemon
    finally:
        daemon.shutdown_requested.set()
        async with asyncio.timeout(60):
            await task
        leftovers = token_processes(daemon.token)
        assert not leftovers, f"processes left behind: {leftovers}"
        # A bug caught in an instance's life (an illegal state change …) is logged and the
        # instance carries on; tests must not let one pass unnoticed.
        assert daemon.internal_errors == 0, "supervisor errors were logged (see the log)"


def state_of(daemon: Daemon, name: str) -> str:
    for row in daemon.ps():
        if row["name"] == name and not row.get("retiring") and not row.get("incoming"):
            return str(row["state"])
    return "absent"


def rows_of(daemon: Daemon, service: str) -> list[dict[str, object]]:
    return [
        r
        for r in daemon.ps()
        if r["service"] == service and not r.get("retiring") and not r.get("incoming")
    ]


def all_ready(daemon: Daemon, service: str, count: int) -> bool:
    rows = rows_of(daemon, service)
    return len(rows) == count and all(r["state"] == "ready" for r in rows)


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Runner:
    """Proxy scenarios run on both loops the daemon may use: asyncio and uvloop."""
    return runner(request.param)


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


os.environ.setdefault("NO_COLOR", "1")
