"""The CLI's surface: --version, global options before the verb, --json output and errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from .test_cli import CORRAL, corral

STACK = f"""
[services.sleeper]
command = ["{sys.executable}", "-c", "import time; time.sleep(600)"]
venv = false
stop_timeout = "1s"
"""


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """Under --json an error is one JSON object on stderr, nothing on stdout."""
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    error = json.loads(lines[0])
    assert isinstance(error, dict) and isinstance(error["error"], str)
    return error


def test_version(tmp_path: Path) -> None:
    result = corral(tmp_path, "--version")
    assert result.stdout == f"corral {version('corral')}\n"


def test_global_options_before_or_after_the_verb(tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text(STACK)
    try:
        up = corral(tmp_path, "--json", "-f", "other.toml", "up", "-d")
        assert [r["name"] for r in json.loads(up.stdout)] == ["sleeper.1"]
        for args in (
            ["-f", "other.toml", "--json", "ps"],
            ["--json", "ps", "-f", "other.toml"],
            ["ps", "--json", "--file", "other.toml"],
            ["-f", "nope.toml", "ps", "-f", "other.toml", "--json"],  # after the verb wins
        ):
            rows = json.loads(corral(tmp_path, *args).stdout)
            assert [r["name"] for r in rows] == ["sleeper.1"], args
        # logs/events keep -f for --follow after the verb; before it, -f is still the file.
        logs = corral(tmp_path, "-f", "other.toml", "logs", "-n", "5")
        assert "sleeper.1" in logs.stdout
        status = json.loads(corral(tmp_path, "--json", "-f", "other.toml", "status").stdout)
        assert status["config"] == str((tmp_path / "other.toml").resolve())
        assert set(status["services"]) == {"sleeper"}
        text = corral(tmp_path, "-f", "other.toml", "status").stdout.splitlines()
        assert text[0].startswith(f"daemon   pid {status['pid']}, up ")
        assert text[1] == f"config   {status['config']} (project {tmp_path.name})"
        assert text[3] == "proxy    off"
        assert text[5].split() == ["SERVICE", "PHASE", "INSTANCES", "DESIRED", "ERROR"]
        assert text[6].split() == ["sleeper", "running", "1", "running", "1"]
        down = corral(tmp_path, "down", "--json", "-f", "other.toml")
        assert json.loads(down.stdout) == {"stopped": True, "pid": status["pid"]}
    finally:
        corral(tmp_path, "-f", "other.toml", "down", check=False)


def test_errors_are_json_under_json(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(STACK)
    no_daemon = corral(tmp_path, "--json", "ps", check=False)
    assert no_daemon.returncode == 1
    assert "no corral daemon is running" in str(json_error(no_daemon)["error"])

    (tmp_path / "corral.toml").write_text(STACK.replace('"1s"', '"soon"'))
    bad = corral(tmp_path, "check", "--json", check=False)
    assert bad.returncode == 2
    error = json_error(bad)
    assert error["file"] == str(tmp_path / "corral.toml")
    assert error["key"] == "services.sleeper.stop_timeout"
    assert "services.sleeper.stop_timeout: expected a duration" in str(error["error"])

    usage = corral(tmp_path, "--json", "scale", check=False)
    assert usage.returncode == 2
    assert "the following arguments are required: SERVICE=N" in str(json_error(usage)["error"])
    # Without --json the same errors stay one plain line.
    plain = corral(tmp_path, "ps", check=False)
    assert plain.stderr.startswith("corral: ") and plain.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_failed_venv_build_names_a_command_that_shows_the_build_log(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "requirements.txt").write_text("corral-no-such-package-xyz==0.0.1\n")
    (tmp_path / "corral.toml").write_text(
        f'[services.api]\ncommand = ["python", "-c", "pass"]\ncwd = "api"\ninstances = 2\n'
        f'python = "{sys.executable}"\n'
    )
    try:
        up = corral(tmp_path, "up", "-d", check=False)
        assert up.returncode == 1
        hint = up.stderr.strip().splitlines()[-1]
        assert hint == "corral: failed: api.1, api.2 (see `corral logs api`)"
        logs = corral(tmp_path, "logs", "api").stdout
        assert "virtualenv build failed" in logs
        assert "corral-no-such-package-xyz" in logs  # the installer's own words
        status = json.loads(corral(tmp_path, "status", "--json").stdout)
        assert str(status["services"]["api"]["error"]).startswith("virtualenv build failed")
    finally:
        corral(tmp_path, "down", check=False)


def test_proxy_with_a_bad_balance_or_a_busy_port_says_one_line(tmp_path: Path) -> None:
    balance = corral(
        tmp_path, "proxy", "--listen", ":0", "--backend", ":1", "--balance", "fastest", check=False
    )
    assert balance.returncode == 2
    assert "argument --balance: invalid choice: 'fastest'" in balance.stderr
    assert "Traceback" not in balance.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*CORRAL, "proxy", "--listen", f"127.0.0.1:{port}", "--backend", "127.0.0.1:1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"corral: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
