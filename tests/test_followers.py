"""A `logs -f` / `events -f` reader that leaves (Ctrl-C) is normal: the daemon logs nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import config
from supervisor.client import Client

from .test_cli import CORRAL, corral, wait_for

STACK = f"""
[services.talker]
command = ["{sys.executable}", "-u", "-c", "import time\\nwhile True: print('tick'); time.sleep(0.05)"]
venv = false
stop_timeout = "1s"

[services.quiet]
command = ["{sys.executable}", "-c", "import time; print('hello', flush=True); time.sleep(600)"]
venv = false
stop_timeout = "1s"
"""


def test_followers_leaving_are_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(STACK)
    client = Client(config.load(tmp_path / "corral.toml").daemon.socket)
    env = {**os.environ, "NO_COLOR": "1"}
    with open(tmp_path / "daemon.err", "w") as err:
        daemon = subprocess.Popen(
            [*CORRAL, "daemon"], cwd=tmp_path, stdout=err, stderr=err, env=env
        )
    followers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(client.alive, what="the daemon's socket")
        for args in (
            ["logs", "-f", "talker"],  # a busy stream: the next write finds the reader gone
            ["logs", "-f", "quiet"],  # a quiet one: nothing is written after the reader left
            ["events", "-f", "-n", "0"],  # quiet until the restart below
        ):
            followers.append(
                subprocess.Popen([*CORRAL, *args], cwd=tmp_path, stdout=subprocess.PIPE, env=env)
            )
        for follower in followers[:2]:
            assert follower.stdout is not None and follower.stdout.readline()
        wait_for(lambda: client.call("GET", "/v1/status")["followers"] == 3, what="3 followers")

        for follower in followers:
            follower.send_signal(signal.SIGINT)  # Ctrl-C
            assert follower.wait(timeout=10) == 130
        corral(tmp_path, "restart", "talker")  # events and log lines for the gone readers
        # Every stream is let go, the quiet ones too (the daemon looks at the connection).
        wait_for(lambda: client.call("GET", "/v1/status")["followers"] == 0, what="no followers")
        corral(tmp_path, "down")
        assert daemon.wait(timeout=30) == 0
    finally:
        for proc in [*followers, daemon]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    log = (tmp_path / "daemon.err").read_text()
    assert "control socket" in log  # the daemon did log to this file
    for sign in ("Traceback", "Error handling request", "ConnectionResetError", "ERROR"):
        assert sign not in log, log


def test_a_follower_of_a_daemon_killed_hard_says_one_line(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(STACK)
    env = {**os.environ, "NO_COLOR": "1"}
    follower = None
    try:
        corral(tmp_path, "up", "-d")
        pid = int((tmp_path / ".corral" / "daemon.lock").read_text())
        follower = subprocess.Popen(
            [*CORRAL, "logs", "-f", "talker"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert follower.stdout is not None and follower.stdout.readline()
        os.kill(pid, signal.SIGKILL)
        _, err = follower.communicate(timeout=20)
        assert follower.returncode == 1
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("corral: the daemon at ") and "went away" in err
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.communicate()
