"""`corral daemon` speaks sd_notify to a real datagram socket playing systemd: READY=1 only
once the start has converged, STATUS= kept current, WATCHDOG, RELOADING and STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .conftest import PY, web_command, write_config

CORRAL = [sys.executable, "-m", "supervisor"]


class FakeSystemd:
    """The NOTIFY_SOCKET end: collects what the daemon sends, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def receive(self) -> None:
        """Take whatever has arrived (for at most 0.1 s)."""
        try:
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        except TimeoutError:
            pass

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if text in message:
                    return message
            assert time.monotonic() < deadline, f"no {text!r} from the daemon; got {self.messages}"
            self.receive()

    def fields(self, name: str) -> list[str]:
        """The values of every `name=` field received so far."""
        return [
            line.partition("=")[2]
            for message in self.messages
            for line in message.split("\n")
            if line.startswith(f"{name}=")
        ]


@contextmanager
def daemon_under(
    tmp_path: Path, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], FakeSystemd]]:
    systemd = FakeSystemd(tmp_path / "notify.sock")
    proc = subprocess.Popen(
        [*CORRAL, "daemon"],
        cwd=tmp_path,
        env={**os.environ, "NOTIFY_SOCKET": str(systemd.path), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, systemd
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        systemd.sock.close()


def test_ready_only_once_every_service_is_ready_completed_or_failed(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "unhealthy").write_text("")  # web's health check fails until the test removes it
    write_config(
        tmp_path,
        f"""
[services.web]
{web_command()}
instances = 2
port = "auto"
venv = false
cwd = "app"
health = {{ http = "/healthz", interval = "200ms", timeout = "150ms", restart_unhealthy = false }}

[services.worker]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"

[services.job]
command = ["{PY}", "-c", "pass"]
oneshot = true
venv = false

[services.broken]
command = ["{PY}", "-c", "raise SystemExit(3)"]
venv = false
crash_limit = 2
crash_loop = "stop"
backoff = {{ initial = "10ms", max = "20ms" }}
""",
    )
    with daemon_under(tmp_path) as (_, systemd):
        # Everything but web has settled; web's instances run but are not ready.
        systemd.wait_for("job 1/1 completed")
        systemd.wait_for("broken 0/1 running (1 failed)")
        systemd.wait_for("worker 1/1 running")
        # A second's more look: still no READY while web is not ready.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            systemd.receive()
        assert not any("READY=1" in m for m in systemd.messages), systemd.messages
        assert systemd.fields("STATUS")[-1].startswith("starting: web 0/2 ready")

        (app / "unhealthy").unlink()
        ready = systemd.wait_for("READY=1")
        # The STATUS= of the READY=1 datagram is the converged summary, in start order.
        status = next(line for line in ready.split("\n") if line.startswith("STATUS="))
        assert status == (
            "STATUS=web 2/2 ready, worker 1/1 running, job 1/1 completed, "
            "broken 0/1 running (1 failed)"
        ), ready

        # STATUS stays current after READY.
        subprocess.run([*CORRAL, "scale", "web=3"], cwd=tmp_path, check=True, capture_output=True)
        systemd.wait_for("STATUS=web 3/3 ready,")
        assert systemd.messages.count(ready) == 1


def test_watchdog_reload_and_stopping(tmp_path: Path) -> None:
    write_config(tmp_path, f'[services.web]\n{web_command()}\nport = "auto"\nvenv = false\n')
    with daemon_under(tmp_path, WATCHDOG_USEC="200000") as (proc, systemd):
        systemd.wait_for("READY=1")
        systemd.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)  # what the unit's ExecReload sends
        reloading = systemd.wait_for("RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        # READY=1 again once the reload is applied (the first one plus this one).
        deadline = time.monotonic() + 30
        while len(readies := [m for m in systemd.messages if "READY=1" in m]) < 2:
            assert time.monotonic() < deadline, systemd.messages
            systemd.receive()
        assert readies[1] == "READY=1\nSTATUS=web 1/1 ready"
        after = systemd.messages[systemd.messages.index(reloading) :]
        assert readies[1] in after
