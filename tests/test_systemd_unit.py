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


# The same stack for units rendered in-process, run by a system interpreter: what a unit may
# hide depends on every path it needs, and this checkout (hence sys.executable) may itself
# live under /tmp or a home, as a CI clone does.
SYSTEM_PY = "/usr/bin/python3"
STACK_OUTSIDE = STACK.replace(PY, SYSTEM_PY)


def _program(where: Path) -> list[str]:
    """A `corral` script in `where` whose interpreter is the system's (as argv for the unit)."""
    script = where / "bin" / "corral"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!{SYSTEM_PY}\n")
    script.chmod(0o755)
    return [str(script)]


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
        "Requires=corral-shop-stack.socket",
        f"X-Corral-Config={path}",
        "TimeoutStartSec=90",  # extended by the daemon while it converges (test_systemd.py)
        "CacheDirectory=corral/shop-stack",
        "TimeoutStopSec=40",  # 30 s of margin + the one service's drain and stop
        "WantedBy=multi-user.target",
        f"WorkingDirectory={tmp_path}",
    ):
        assert line in lines, (line, service)
    # The project is under /tmp (and so may this checkout be): no private /tmp, and the unit
    # says why (which path comes first depends on where Corral itself is).
    assert "PrivateTmp=yes" not in lines
    assert any(line.startswith("# No PrivateTmp=: /") for line in lines), service
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
    # Restarting the service must not restart (close) the socket: clients wait in its backlog.
    assert not any(line.startswith("PartOf=") for line in socket), socket
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
        plan = config.load(write_config(project, STACK_OUTSIDE))
        lines = unit.service_unit(plan, user=False, argv=_program(project)).splitlines()
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


def test_a_project_name_cannot_inject_directives(tmp_path: Path) -> None:
    """`project` is validated at load time (file and key named); a name that is not (the
    directory's) is still written safely: % doubled, control characters refused."""
    path = write_config(tmp_path, 'project = "shop\\n[Service]\\nExecStartPre=/usr/bin/touch /x"\n')
    done = corral("check", "-f", str(path))
    assert done.returncode != 0
    assert f"{path}: project: expected a name of letters, digits" in done.stderr, done.stderr
    api = STACK.split("[services.api]", 1)[1]
    for bad in ("shop%nbig", "shop\n[Service]"):
        project = tmp_path / bad
        project.mkdir()
        config_path = write_config(project, f"[services.api]{api}")
        done = corral("systemd-unit", "-f", str(config_path))
        if "\n" in bad:
            assert done.returncode != 0 and done.stdout == ""
            assert "contains the control character '\\n'" in done.stderr, done.stderr
            continue
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert f"Description=Corral: shop%%nbig ({tmp_path}/shop%%nbig/corral.toml)" in lines
        assert f"WorkingDirectory={tmp_path}/shop%%nbig" in lines
        assert [line for line in lines if line.startswith("[")] == [
            "[Unit]",
            "[Service]",
            "[Install]",
        ]


def _sandbox_case(tmp_path: Path, daemon: str) -> tuple[list[str], str]:
    """The system unit for a project outside /tmp and the homes, with `daemon` as [daemon]."""
    analyze = require_tool("systemd-analyze", "systemd")
    base = Path("/srv")
    if not os.access(base, os.W_OK):
        pytest.skip("needs a writable /srv: a project outside /tmp and the home directories")
    project = Path(tempfile.mkdtemp(prefix="corral-unit-test-", dir=base))
    try:
        plan = config.load(write_config(project, f"{STACK_OUTSIDE}\n[daemon]\n{daemon}\n"))
        text = unit.service_unit(plan, user=False, argv=_program(project))
        service = tmp_path / "corral-shop-stack.service"
        service.write_text(text)
        assert verify(analyze, [service], user=False, runtime=tmp_path) == ""
    finally:
        shutil.rmtree(project)
    return text.splitlines(), str(project)


def test_a_socket_in_tmp_gets_no_private_tmp(tmp_path: Path) -> None:
    lines, project = _sandbox_case(tmp_path, f'socket = "/tmp/corral-unit-{os.getpid()}.sock"')
    assert "PrivateTmp=yes" not in lines  # the CLI could not see the socket
    assert "# No PrivateTmp=: /tmp is under a temporary directory." in lines
    assert f"ReadWritePaths={project} /tmp" in lines


def test_a_state_dir_in_var_tmp_gets_no_private_tmp(tmp_path: Path) -> None:
    lines, project = _sandbox_case(tmp_path, 'state_dir = "/var/tmp/corral-unit-state"')
    assert "PrivateTmp=yes" not in lines  # it would be wiped at every stop
    assert "# No PrivateTmp=: /var/tmp/corral-unit-state is under a temporary directory." in lines
    assert f"ReadWritePaths={project} /var/tmp/corral-unit-state" in lines


def test_logs_under_home_make_home_read_only_not_hidden(tmp_path: Path) -> None:
    lines, project = _sandbox_case(tmp_path, 'logs_dir = "/home/corral-unit-logs"')
    assert "ProtectHome=yes" not in lines  # hidden, the logs could not be written
    assert "ProtectHome=read-only" in lines
    reason = next(line for line in lines if line.startswith("# ProtectHome=read-only"))
    assert "/home/corral-unit-logs" in reason, reason
    assert f"ReadWritePaths=/home/corral-unit-logs {project}" in lines


def test_corral_itself_under_tmp_gets_no_private_tmp(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    if not os.access("/srv", os.W_OK):
        pytest.skip("needs a writable /srv: a project outside /tmp and the home directories")
    project = Path(tempfile.mkdtemp(prefix="corral-unit-test-", dir="/srv"))
    script = tmp_path / "venv" / "bin" / "corral"  # (systemd-analyze wants it to exist)
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    try:
        plan = config.load(write_config(project, STACK_OUTSIDE))
        outside = unit.service_unit(plan, user=False, argv=_program(project))
        inside = unit.service_unit(plan, user=False, argv=[str(script)])
    finally:
        shutil.rmtree(project)
    assert "PrivateTmp=yes" in outside.splitlines()
    lines = inside.splitlines()
    assert "PrivateTmp=yes" not in lines
    assert f"# No PrivateTmp=: {script} is under a temporary directory." in lines
    service = tmp_path / "corral-shop-stack.service"
    service.write_text(inside)
    assert verify(analyze, [service], user=False, runtime=tmp_path) == ""


def test_a_user_unit_for_services_with_a_user_is_refused_when_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, STACK + 'user = "nobody"\n')
    plan = config.load(path)
    assert unit.units(plan, user=False, socket=False)  # the system unit runs as root
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # (a user manager that is not root's)
    with pytest.raises(unit.SupervisorError) as info:
        unit.units(plan, user=True, socket=False)
    assert str(info.value) == (
        f"{path}: services.api.user: a user unit runs as you, not root, so it cannot run a "
        "service as another user; use the system unit (without --user) or remove user/group"
    )
