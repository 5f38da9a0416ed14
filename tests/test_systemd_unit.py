"""`corral systemd-unit`: the units it writes, accepted by the real `systemd-analyze verify`
(which exits 0 even on unknown keys and bad values, so its warnings must be absent too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import config
from supervisor import unit

from .capabilities import require_tool
from .conftest import PY, write_config

STACK = f"""
project = "Shop Stack"

[proxy]
listen = ["127.0.0.1:18080", "[::1]:18080"]

[services.api]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
port = "auto"
venv = false
drain_timeout = "5s"
stop_timeout = "5s"
"""


def corral(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def verify(analyze: str, files: list[Path], *, user: bool, runtime: Path) -> str:
    """systemd-analyze verify's complaints ("" when there are none)."""
    argv = [analyze, *(["--user"] if user else []), "verify", *map(str, files)]
    # A user manager needs a runtime directory, even offline.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    complaints = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 or complaints, done
    return complaints if done.returncode == 0 else f"exit {done.returncode}: {complaints}"


def test_the_system_units_have_what_the_issue_lists_and_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    path = write_config(tmp_path, STACK)
    out = tmp_path / "units"
    done = corral("systemd-unit", "-f", str(path), "--socket", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"wrote {out / 'corral-shop-stack.service'}",
        f"wrote {out / 'corral-shop-stack.socket'}",
    ]
    service = (out / "corral-shop-stack.service").read_text()
    lines = service.splitlines()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "Restart=on-failure",
        "WatchdogSec=30",
        "Environment=CORRAL_UNIT=%n",
        "RuntimeDirectory=corral/shop-stack",
        "StateDirectory=corral/shop-stack",
        "LogsDirectory=corral/shop-stack",
        "Delegate=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "# No PrivateTmp=: the project is under /tmp, which it would hide.",
        "Requires=corral-shop-stack.socket",
        "TimeoutStopSec=40",  # 30 s of margin + the one service's drain and stop
        "WantedBy=multi-user.target",
        f"WorkingDirectory={tmp_path}",
    ):
        assert line in lines, (line, service)
    assert f"ReadWritePaths={tmp_path}" in lines  # the project; .corral/ is inside it
    assert any(line.startswith("ProtectHome=") for line in lines)
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start.endswith(f" daemon -f {path}")
    socket = (out / "corral-shop-stack.socket").read_text().splitlines()
    for line in (
        "ListenStream=127.0.0.1:18080",
        "ListenStream=[::1]:18080",
        "BindIPv6Only=ipv6-only",
        "FileDescriptorName=proxy",
        "Service=corral-shop-stack.service",
        "WantedBy=sockets.target",
    ):
        assert line in socket, (line, socket)
    files = [out / "corral-shop-stack.service", out / "corral-shop-stack.socket"]
    assert verify(analyze, files, user=False, runtime=tmp_path) == ""
    # The check can fail: a unit with a typo is reported.
    broken = out / "corral-broken.service"
    broken.write_text(service.replace("KillMode=mixed", "KillMode=mixd"))
    assert "Failed to parse kill mode" in verify(analyze, [broken], user=False, runtime=tmp_path)


def test_a_project_outside_tmp_gets_a_private_tmp() -> None:
    home = Path.home()
    project = Path(tempfile.mkdtemp(prefix=".corral-unit-test-", dir=home))  # not under /tmp
    try:
        plan = config.load(write_config(project, STACK))
        lines = unit.service_unit(plan, user=False).splitlines()
    finally:
        shutil.rmtree(project)
    assert "PrivateTmp=yes" in lines
    assert f"ReadWritePaths={project}" in lines
    if any(h in project.parents for h in unit.HOMES):
        assert "ProtectHome=read-only" in lines  # under a home: hidden, it could not run


def test_the_user_unit_verifies_and_installs_with_the_next_commands(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    path = write_config(tmp_path, STACK)
    done = corral("systemd-unit", "--user", "-f", str(path))
    assert done.returncode == 0, done.stderr
    unit = done.stdout
    assert "WantedBy=default.target" in unit.splitlines()
    assert "ProtectSystem" not in unit and "ProtectHome" not in unit  # see supervisor/unit.py
    config_home = tmp_path / "xdg"
    done = corral(
        "systemd-unit", "--user", "--install", "-f", str(path),
        env={"XDG_CONFIG_HOME": str(config_home), "USER": "alice"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    installed = config_home / "systemd" / "user" / "corral-shop-stack.service"
    assert done.stdout.splitlines() == [
        f"wrote {installed}",
        "now run:",
        "  systemctl --user daemon-reload",
        "  systemctl --user enable --now corral-shop-stack.service",
        "  loginctl enable-linger alice",
    ]
    assert installed.read_text() == unit
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    assert verify(analyze, [installed], user=True, runtime=runtime) == ""


@pytest.mark.parametrize(
    ("proxy", "error"),
    [
        ('[proxy]\nlisten = "127.0.0.1:0"\n', "proxy.listen 127.0.0.1:0: a socket unit needs a fixed port, not 0"),
        ('[proxy]\nlisten = "localhost:8080"\n', "a socket unit needs an IP address, not the name 'localhost'"),
        ("", "no [proxy], so there is no socket to activate"),
    ],
)  # fmt: skip
def test_a_socket_unit_that_cannot_be_written_says_why(
    tmp_path: Path, proxy: str, error: str
) -> None:
    api = STACK.split("[services.api]", 1)[1]
    path = write_config(tmp_path, f'project = "x"\n{proxy}\n[services.api]{api}')
    done = corral("systemd-unit", "--socket", "-f", str(path))
    assert done.returncode != 0
    assert error in done.stderr, done.stderr
    assert done.stdout == ""
