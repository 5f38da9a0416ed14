"""A daemon restart under socket activation refuses no client: the test plays the .socket
unit (which, not PartOf= the service, stays up while `systemctl restart` restarts the
service). It holds the listening socket and hands it to one daemon, then, after that daemon
has stopped, to the next; a client that connects while no daemon runs waits in the backlog
and is answered by the second daemon."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .conftest import http_get, wait_until, web_service, write_config

# What systemd does between fork and exec: the descriptor at 3, LISTEN_PID = the daemon's pid.
EXEC_AS_ACTIVATED = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="proxy")
os.execv(sys.executable, [sys.executable, "-m", "supervisor", "daemon", "-f", sys.argv[2]])
"""


def _activated(listener: socket.socket, path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", EXEC_AS_ACTIVATED, str(listener.fileno()), str(path)],
            pass_fds=(listener.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=path.parent,
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


async def test_a_client_during_a_daemon_restart_waits_and_is_answered(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    path = write_config(
        tmp_path,
        f'project = "restart"\n[proxy]\nlisten = "127.0.0.1:{port}"\nqueue_timeout = "60s"\n'
        + web_service("web"),
    )
    log = tmp_path / "daemon.log"

    async def served() -> bool:
        code, _ = await http_get(port, "/")
        return code == 200

    first = _activated(listener, path, log)
    try:
        await wait_until(served, timeout=60, what="the first daemon serving")
        assert await asyncio.to_thread(_stop, first) == 0, log.read_text()
        # No daemon now, but the socket still listens: this client is queued, not refused.
        client = asyncio.ensure_future(http_get(port, "/", timeout=60))
        await asyncio.sleep(0)  # (let it connect before the next daemon exists)
        await wait_until(lambda: _queued(port), timeout=15, what="the client in the backlog")
        assert not client.done()
        second = _activated(listener, path, log)
        try:
            status, body = await client
            assert status == 200, (status, body, log.read_text())
            assert b'"instance": "web.1"' in body, body
        finally:
            assert await asyncio.to_thread(_stop, second) == 0, log.read_text()
    finally:
        _stop(first)
        listener.close()


def _queued(port: int) -> bool:
    """Our client's connection to `port` is established: the kernel completed the handshake
    and queued it in the listener's backlog (no daemon is running to accept it)."""
    import psutil

    me = psutil.Process()
    return any(
        c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in me.net_connections("tcp")
    )
