"""Stopping the daemon at awkward moments: during a roll, and a second Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.daemon import Daemon
from supervisor.errors import OrderInterrupted

from .conftest import APPS, PY, all_ready, pid_alive, running_daemon, token_processes, wait_until

CORRAL = [sys.executable, "-m", "supervisor"]

# web.py, unless a file named `slow` exists: then it never binds its port (a replacement that
# stays "starting").
SLOW_WEB = (
    "import os, runpy, time\n"
    "if os.path.exists('slow'): time.sleep(3600)\n"
    f"runpy.run_path({str(APPS / 'web.py')!r}, run_name='__main__')\n"
)


async def test_shutdown_during_a_roll_cancels_it_and_leaves_no_process(tmp_path: Path) -> None:
    (tmp_path / "slow_web.py").write_text(SLOW_WEB)
    path = tmp_path / "corral.toml"
    path.write_text(
        f"""
[services.web]
command = ["{PY}", "slow_web.py"]
cwd = "{tmp_path}"
port = "auto"
venv = false
stop_timeout = "2s"
"""
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        old = next(r["pid"] for r in daemon.ps())
        (tmp_path / "slow").write_text("")
        roll = asyncio.create_task(daemon.restart(["web"]))
        await wait_until(
            lambda: any(r["incoming"] and r["pid"] for r in daemon.ps()), what="a replacement"
        )
        replacement = next(r["pid"] for r in daemon.ps() if r["incoming"])
        assert not roll.done()  # the roll waits for a replacement that will not get ready
        daemon.request_shutdown()
        # Cancelled by the shutdown, not ended by its own readiness budget (RollFailed).
        with pytest.raises(OrderInterrupted, match="restart interrupted"):
            await roll
    # running_daemon asserted that nothing carrying the daemon's token is left.
    assert isinstance(old, int) and isinstance(replacement, int)
    assert not pid_alive(old) and not pid_alive(replacement)


def test_a_second_ctrl_c_kills_everything_at_once(tmp_path: Path) -> None:
    # An instance that ignores SIGTERM, with a stop timeout far longer than this test may
    # take: after one Ctrl-C, corral up waits for it, as it should; the second one kills it.
    (tmp_path / "corral.toml").write_text(
        f"""
[services.stubborn]
command = ["{PY}", "-c", "import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\nprint('up', flush=True)\\ntime.sleep(3600)"]
venv = false
stop_timeout = "10m"
"""
    )
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CORRAL_SOCKET", None)
    proc = subprocess.Popen(
        [*CORRAL, "up"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    try:
        _read_until(proc, "| up")
        ps = subprocess.run(
            [*CORRAL, "ps", "--json"], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        pid = json.loads(ps.stdout)[0]["pid"]
        token = json.loads((tmp_path / ".corral" / "state.json").read_text())["token"]
        proc.send_signal(signal.SIGINT)
        _read_until(proc, "press Ctrl-C again")
        assert proc.poll() is None and pid_alive(pid)  # graceful: waiting on the stop timeout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not pid_alive(pid)
        assert token_processes(token) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _read_until(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed; got:\n{''.join(seen)}")


async def test_shutdown_finishes_the_requests_under_way_before_stopping_instances(
    tmp_path: Path,
) -> None:
    path = _web_behind_the_proxy(tmp_path)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        port = daemon.traffic.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /sleep/1500 HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: _in_flight(daemon) > 0, what="the request to reach the instance")
        daemon.request_shutdown()
        # Answered in full by the instance, which the shutdown stops only afterwards; the
        # keep-alive connection is then closed instead of being offered another request.
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = json.loads(await reader.readexactly(length))
            assert await reader.read() == b""
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body["path"] == "/sleep/1500"


def _web_behind_the_proxy(tmp_path: Path) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(
        f"""
[proxy]
listen = "127.0.0.1:0"

[services.web]
command = ["{PY}", "{APPS / "web.py"}"]
port = "auto"
venv = false
route = {{ path = "/" }}
"""
    )
    return path


def _in_flight(daemon: Daemon) -> int:
    pools = daemon.traffic.describe()["pools"]
    assert isinstance(pools, dict)
    return sum(int(b["in_flight"]) for backends in pools.values() for b in backends)


async def _one_request(port: int) -> str:
    """The outcome of one GET on a new connection: "refused", or the status line's code."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset at connect: it sat in the backlog of a listener that closed. Either way the
        # client never sent its request, and may retry it anywhere.
        return "refused"
    try:
        writer.write(b"GET /sleep/20 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
    except ConnectionError:
        return "reset"
    finally:
        writer.close()
    return raw.split(b" ", 2)[1].decode() if raw else "no response"


async def test_a_request_during_shutdown_is_refused_or_answered_never_failed(
    tmp_path: Path,
) -> None:
    path = _web_behind_the_proxy(tmp_path)
    outcomes: list[str] = []
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        port = daemon.traffic.addresses[0][1]
        # A long request keeps the instance busy, so the shutdown takes a while.
        slow = asyncio.create_task(asyncio.open_connection("127.0.0.1", port))
        reader, writer = await slow
        writer.write(b"GET /sleep/1500 HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: _in_flight(daemon) > 0, what="the request to reach the instance")
        daemon.request_shutdown()
        # New clients while the daemon shuts down: nginx's graceful quit refuses them at
        # connect once it stops listening; none is taken in and then answered with an error.
        while not outcomes or outcomes[-1] != "refused":
            outcomes.append(await _one_request(port))
        await reader.read()
        writer.close()
    assert set(outcomes) <= {"200", "refused"}, outcomes


async def test_a_stopped_process_is_woken_so_it_can_act_on_its_stop_signal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(
        f"""
[services.web]
command = ["{PY}", "{APPS / "web.py"}"]
port = "auto"
venv = false
stop_timeout = "10m"
"""
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        pid = next(r["pid"] for r in daemon.ps())
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGSTOP)
        async with asyncio.timeout(30):
            await daemon.stop(["web"])
        row = next(r for r in daemon.ps())
        # It handled SIGTERM and exited 0 (SIGCONT woke it), not SIGKILLed ten minutes later.
        assert row["last_exit"] == 0, row
