"""The start-up timeout: READY=1 waits for every service, however long its start_timeout, so
until then the daemon keeps extending systemd's TimeoutStartSec= with EXTEND_TIMEOUT_USEC
(received here by a real datagram socket playing systemd), and stops once it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from supervisor.systemd import Notifier

from .conftest import web_command, write_config
from .test_systemd import FakeSystemd, daemon_under

EXTEND = "EXTEND_TIMEOUT_USEC=60000000"  # 60 s more, asked for every 20 s


def _extensions(systemd: FakeSystemd) -> int:
    return sum(m.split("\n").count(EXTEND) for m in systemd.messages)


def _wait_for_extensions(systemd: FakeSystemd, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _extensions(systemd) < count:
        assert time.monotonic() < deadline, f"not {count} x {EXTEND}; got {systemd.messages}"
        systemd.receive()


def test_a_slow_start_gets_its_start_timeout_extended(tmp_path: Path) -> None:
    """No venv build involved: a service that is slow to get ready (start_timeout = "5m")
    used to leave systemd's 90 s TimeoutStartSec= unextended."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "unhealthy").write_text("")  # not ready until the test removes it
    write_config(
        tmp_path,
        f"""
[services.web]
{web_command()}
port = "auto"
venv = false
cwd = "app"
start_timeout = "5m"
health = {{ http = "/healthz", interval = "200ms", timeout = "150ms", restart_unhealthy = false }}
""",
    )
    with daemon_under(tmp_path) as (_, systemd):
        systemd.wait_for("STATUS=starting: web 0/1 ready")
        _wait_for_extensions(systemd, 1, timeout=30)
        assert not any("READY=1" in m for m in systemd.messages), systemd.messages
        (app / "unhealthy").unlink()
        systemd.wait_for("READY=1")


async def test_extensions_repeat_until_ready_then_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Notifier itself, on a fast cadence: every `extend_every` while not converged,
    never after READY=1 (they would stretch the runtime timeout instead)."""
    systemd = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    converged = False
    notifier = Notifier(
        lambda: "web 0/1 ready", lambda: converged, extend_every=0.25
    )  # (above receive's 0.1 s gap)
    task = asyncio.get_running_loop().create_task(notifier.run())
    try:
        await asyncio.to_thread(_wait_for_extensions, systemd, 3, 30)
        assert not any("READY=1" in m for m in systemd.messages), systemd.messages
        converged = True
        notifier.changed()
        await asyncio.to_thread(systemd.wait_for, "READY=1")
        extensions = _extensions(systemd)
        # Four periods on: still no more.
        await asyncio.sleep(1.0)
        await asyncio.to_thread(systemd.receive)
        assert _extensions(systemd) == extensions, systemd.messages
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        systemd.sock.close()
