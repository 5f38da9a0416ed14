"""Socket activation with the real `systemd-socket-activate`: it binds the proxy's port, waits
for the first connection, then execs `corral daemon` with LISTEN_FDS; the proxy serves on the
inherited socket (it could not bind the port itself: it is taken) and that first client,
queued in the backlog meanwhile, is answered through the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from supervisor.ports import free_port

from .capabilities import require_tool
from .conftest import http_get, wait_until, web_service, write_config


async def _first_answer(port: int) -> tuple[int, bytes]:
    """The first request: it connects before the daemon even exists."""
    return await http_get(port, "/", timeout=60)


def _launch(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_the_proxy_serves_on_the_sockets_systemd_socket_activate_passes(
    tmp_path: Path,
) -> None:
    activate = require_tool("systemd-socket-activate", "systemd")
    port = free_port()
    path = write_config(
        tmp_path,
        # The first client waits in the queue while the daemon starts (slow on a busy host).
        f'project = "act"\n[proxy]\nlisten = "127.0.0.1:{port}"\nqueue_timeout = "60s"\n'
        + web_service("web", instances=2),
    )
    log = tmp_path / "daemon.log"
    argv = [activate, "-l", f"127.0.0.1:{port}", "--fdname=proxy"]
    # It gives the daemon only the variables named with -E (and LISTEN_*).
    argv += [f"-E{var}" for var in ("PATH", "HOME", "CORRAL_CGROUP") if var in os.environ]
    argv += [sys.executable, "-m", "supervisor", "daemon", "-v", "-f", str(path)]
    proc = _launch(argv, log, tmp_path)
    try:
        await wait_until(
            lambda: f"Listening on 127.0.0.1:{port}" in log.read_text(),
            timeout=30,
            what="systemd-socket-activate listening",
        )
        # Nothing started yet: the daemon comes with the first connection.
        assert psutil.Process(proc.pid).name() == "systemd-socket-activate"
        status, body = await _first_answer(port)
        text = log.read_text()
        assert status == 200, (status, body, text)  # queued until an instance was ready
        # The same process, now the daemon, with the inherited descriptor.
        daemon = psutil.Process(proc.pid)
        assert "supervisor" in daemon.cmdline()
        assert f"socket activation: proxy=127.0.0.1:{port}" in text, text
        assert f"proxy listening on 127.0.0.1:{port}" in text, text

        async def served() -> bool:
            code, _ = await http_get(port, "/")
            return code == 200

        await wait_until(served, timeout=60, what="web served through the proxy")
        # The instances did not inherit the listening socket (it is close-on-exec).
        listening = [c for c in daemon.net_connections("tcp") if c.laddr.port == port]
        assert listening and all(c.status == psutil.CONN_LISTEN for c in listening)
        for child in daemon.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                held = [c for c in child.net_connections("tcp") if c.laddr.port == port]
                assert not held, (child, held)
            with contextlib.suppress(psutil.Error):
                assert "LISTEN_FDS" not in child.environ()
    finally:
        await asyncio.to_thread(_stop, proc)
    assert proc.returncode == 0, log.read_text()


async def test_a_passed_socket_that_does_not_listen_is_refused_clearly(tmp_path: Path) -> None:
    """LISTEN_FDS pointing at a datagram socket: a clear error, and the daemon exits."""
    activate = require_tool("systemd-socket-activate", "systemd")
    port = free_port()
    path = write_config(
        tmp_path,
        f'project = "act"\n[proxy]\nlisten = "127.0.0.1:{port}"\n' + web_service("web"),
    )
    log = tmp_path / "daemon.log"
    argv = [activate, "--datagram", "-l", f"127.0.0.1:{port}", "--fdname=proxy"]
    argv += [f"-E{var}" for var in ("PATH", "HOME") if var in os.environ]
    argv += [sys.executable, "-m", "supervisor", "daemon", "-f", str(path)]
    proc = _launch(argv, log, tmp_path)
    try:
        await wait_until(lambda: "Listening on" in log.read_text(), timeout=30)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
        )
        transport.sendto(b"wake up")  # a datagram socket's first arrival starts the daemon
        transport.close()
        await wait_until(lambda: proc.poll() is not None, timeout=60, what="the daemon exits")
    finally:
        await asyncio.to_thread(_stop, proc)
    text = log.read_text()
    assert proc.returncode != 0, text
    assert (
        f"socket activation: descriptor 3 (proxy, 127.0.0.1:{port}) is not a listening stream "
        "socket (the proxy needs ListenStream=)"
    ) in text, text


async def test_a_passed_unix_socket_is_refused_clearly(tmp_path: Path) -> None:
    """A Unix-domain socket beside the TCP one: refused before anything starts, never a crash
    at the first connection (the proxy's addresses and peers are TCP's)."""
    activate = require_tool("systemd-socket-activate", "systemd")
    port = free_port()
    path = write_config(
        tmp_path,
        f'project = "act"\n[proxy]\nlisten = "127.0.0.1:{port}"\n' + web_service("web"),
    )
    unix_path = tmp_path / "sb.sock"
    log = tmp_path / "daemon.log"
    argv = [activate, "-l", f"127.0.0.1:{port}", "-l", str(unix_path)]
    argv += [f"-E{var}" for var in ("PATH", "HOME") if var in os.environ]
    argv += [sys.executable, "-m", "supervisor", "daemon", "-f", str(path)]
    proc = _launch(argv, log, tmp_path)
    try:
        await wait_until(lambda: unix_path.exists(), timeout=30, what="the Unix socket")
        with contextlib.suppress(OSError):  # the daemon may refuse before it answers
            await http_get(port, "/", timeout=30)
        await wait_until(lambda: proc.poll() is not None, timeout=60, what="the daemon exits")
    finally:
        await asyncio.to_thread(_stop, proc)
    text = log.read_text()
    assert proc.returncode != 0, text
    assert (
        f"socket activation: descriptor 4 (unknown, {unix_path}) is a Unix-domain socket; "
        "the proxy serves TCP only"
    ) in text, text
    assert "Traceback" not in text, text
    assert not (tmp_path / ".corral" / "corral.sock").exists()  # it never answered
