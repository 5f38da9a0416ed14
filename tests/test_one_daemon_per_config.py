"""One daemon per config file, and the CLI never acts on a daemon serving another one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import config

from .conftest import pid_alive
from .test_cli import CORRAL, corral, wait_for


def stack(name: str, extra: str = "") -> str:
    return f"""{extra}
[services.{name}]
command = ["{sys.executable}", "-c", "import time\\nwhile True: time.sleep(1)"]
venv = false
stop_timeout = "1s"
"""


def names(cwd: Path, *args: str) -> list[str]:
    return [r["name"] for r in json.loads(corral(cwd, "ps", "--json", *args).stdout)]


def daemon_pid(cwd: Path, *args: str) -> int:
    return int(json.loads(corral(cwd, "status", "--json", *args).stdout)["pid"])


def stop_by_pid(*state_dirs: Path) -> None:
    """Last resort for a finally: a daemon `down` could not reach still gets SIGTERM, by pid."""
    for state in state_dirs:
        try:
            pid = int((state / "daemon.lock").read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda p=pid: not pid_alive(p), what=f"daemon {pid} to stop")


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_state_layout_is_per_config_file(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(stack("a"))
    (tmp_path / "b.toml").write_text(stack("b"))
    root = tmp_path.resolve()
    a = config.load(tmp_path / "corral.toml")
    b = config.load(tmp_path / "b.toml")
    assert a.daemon.state_dir == root / ".corral"
    assert b.daemon.state_dir == root / ".corral" / "configs" / "b.toml"
    assert a.daemon.socket != b.daemon.socket
    assert config.socket_of(tmp_path / "b.toml") == b.daemon.socket


def test_two_configs_in_one_directory_run_two_daemons(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(stack("a"))
    (tmp_path / "b.toml").write_text(stack("b"))
    try:
        up_a = corral(tmp_path, "up", "-d")
        assert "a.1" in up_a.stdout
        up_b = corral(tmp_path, "up", "-d", "-f", "b.toml")
        assert "b.1" in up_b.stdout and "a.1" not in up_b.stdout
        assert names(tmp_path) == ["a.1"]
        assert names(tmp_path, "-f", "b.toml") == ["b.1"]
        pid_a = daemon_pid(tmp_path)
        assert daemon_pid(tmp_path, "-f", "b.toml") != pid_a

        corral(tmp_path, "down", "-f", "b.toml")
        assert pid_alive(pid_a)
        assert names(tmp_path) == ["a.1"]
        gone = corral(tmp_path, "ps", "-f", "b.toml", check=False)
        assert "no corral daemon is running" in one_line(gone)
    finally:
        corral(tmp_path, "down", "-f", "b.toml", check=False)
        corral(tmp_path, "down", check=False)
        stop_by_pid(tmp_path / ".corral", tmp_path / ".corral" / "configs" / "b.toml")


def test_a_missing_config_file_is_an_error_not_the_directory_daemon(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(stack("a"))
    try:
        corral(tmp_path, "up", "-d")
        pid = daemon_pid(tmp_path)
        for verb in ("ps", "down", "reload", "status"):
            result = corral(tmp_path, verb, "-f", "nope.toml", check=False)
            assert result.returncode == 2
            assert one_line(result).endswith("nope.toml: file not found"), verb
        assert pid_alive(pid) and names(tmp_path) == ["a.1"]
    finally:
        corral(tmp_path, "down", check=False)


def test_two_projects_sharing_a_socket_never_touch_each_other(tmp_path: Path) -> None:
    shared = tmp_path / "run" / "shared.sock"
    setting = f'[daemon]\nsocket = "{shared}"\n'
    a, b = tmp_path / "a", tmp_path / "b"
    for project, name in ((a, "a"), (b, "b")):
        project.mkdir()
        (project / "corral.toml").write_text(stack(name, setting))
    try:
        corral(a, "up", "-d")
        pid = daemon_pid(a)
        refusal = f"the daemon on {shared} serves {a.resolve() / 'corral.toml'}, not "
        for args in (["up", "-d"], ["up"], ["ps"], ["down"], ["reload"], ["stop", "b"]):
            line = one_line(corral(b, *args, check=False))
            assert refusal in line, (args, line)
        # `corral daemon` for b (as systemd would run it) refuses to take the socket over.
        daemon = subprocess.run(
            [*CORRAL, "daemon"], cwd=b, capture_output=True, text=True, timeout=60
        )
        assert daemon.returncode == 1
        assert f"{shared} is in use by another running corral daemon" in daemon.stderr
        assert pid_alive(pid) and names(a) == ["a.1"]
        # An explicit --socket without -f is "that daemon, whichever it serves".
        assert names(b, "--socket", str(shared)) == ["a.1"]
        corral(a, "down")
        # Once a is gone, b may use the path.
        corral(b, "up", "-d")
        assert names(b) == ["b.1"]
    finally:
        corral(b, "down", check=False)
        corral(a, "down", check=False)
        stop_by_pid(a / ".corral", b / ".corral")


def test_a_stale_socket_of_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(stack("a"))
    try:
        corral(tmp_path, "up", "-d")
        pid = daemon_pid(tmp_path)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), what="the daemon to die")
        assert (tmp_path / ".corral" / "corral.sock").exists()
        corral(tmp_path, "up", "-d")
        assert daemon_pid(tmp_path) != pid
    finally:
        corral(tmp_path, "down", check=False)


@pytest.mark.parametrize("content", [b"[services.a\n", b'project = "caf\xe9"\n'])
def test_a_broken_or_non_utf8_config_still_reaches_its_daemon(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "b.toml"
    path.write_text(stack("a"))
    try:
        corral(tmp_path, "up", "-d", "-f", "b.toml")
        path.write_bytes(content)
        assert names(tmp_path, "-f", "b.toml") == ["a.1"]
        reload = corral(tmp_path, "reload", "-f", "b.toml", check=False)
        assert reload.returncode == 1
        assert "config not reloaded, nothing changed" in one_line(reload)
        corral(tmp_path, "down", "-f", "b.toml")
    finally:
        path.write_text(stack("a"))
        corral(tmp_path, "down", "-f", "b.toml", check=False)
