"""`corral daemon` speaks sd_notify: READY, STATUS, WATCHDOG and STOPPING, to a real socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .conftest import web_command, write_config


def test_daemon_notifies_systemd(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        f'[services.web]\n{web_command()}\nport = "auto"\nvenv = false\n',
    )
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    messages: list[str] = []

    def receive_until(word: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(word in m for m in messages):
            assert time.monotonic() < deadline, f"no {word} from the daemon; got {messages}"
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass

    try:
        receive_until("READY=1")
        receive_until("WATCHDOG=1")
        receive_until("instances up")  # STATUS= lines follow readiness
        proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=" in ready
