"""`up -d` tells the truth: a minimum uptime, what a starting instance waits for, a start timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from supervisor.ports import free_port

from .conftest import PY, running_daemon, state_of, wait_until, write_config

CORRAL = [sys.executable, "-m", "supervisor"]


def _corral(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CORRAL_SOCKET", None)
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def _down(cwd: Path) -> None:
    if (cwd / ".corral" / "corral.sock").exists():
        _corral(cwd, "down")


def test_up_d_fails_for_a_portless_service_that_crashes_soon_after_start(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        f"""
[services.flaky]
command = ["{PY}", "-c", "import time; time.sleep(0.1); raise SystemExit(1)"]
venv = false
crash_limit = 3
backoff = {{ initial = "50ms", max = "100ms" }}
""",
    )
    try:
        up = _corral(tmp_path, "up", "-d", "--timeout", "60")
        assert up.returncode == 1, up
        assert "corral: failed: flaky.1" in up.stderr
        rows = json.loads(_corral(tmp_path, "ps", "--json").stdout)
        assert rows[0]["state"] == "failed"
        assert "crashed 3 times" in rows[0]["detail"]
    finally:
        _down(tmp_path)


def test_up_d_reports_a_port_that_never_opens_as_failed_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    write_config(
        tmp_path,
        f"""
[services.mute]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
port = {port}
venv = false
start_timeout = "1s"
""",
    )
    try:
        up = _corral(tmp_path, "up", "-d", "--timeout", "60")
        assert up.returncode == 1, up
        assert "not ready after 1s: port" in up.stdout  # ps's DETAIL (cut at 60 characters)
        assert "corral: failed: mute.1" in up.stderr
        row = json.loads(_corral(tmp_path, "ps", "--json").stdout)[0]
        assert row["detail"].endswith(f"not ready after 1s: port {port} not accepting yet")
    finally:
        _down(tmp_path)


async def test_detail_says_what_a_starting_instance_waits_for(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(
        tmp_path,
        f"""
[services.mute]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
port = {port}
venv = false
stop_timeout = "1s"

[services.worker]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "5s"
stop_timeout = "1s"
""",
    )

    def detail(name: str) -> str:
        return next(str(r["detail"]) for r in daemon.ps() if r["name"] == name)

    async with running_daemon(path) as daemon:
        await wait_until(lambda: detail("mute.1") == f"port {port} not accepting yet")
        assert state_of(daemon, "mute.1") == "starting"
        assert detail("worker.1") == "counts as running after 5s up (min_uptime)"
        assert state_of(daemon, "worker.1") == "starting"
        await wait_until(lambda: state_of(daemon, "worker.1") == "running")
