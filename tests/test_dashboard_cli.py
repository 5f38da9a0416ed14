"""`corral dashboard` and a dashboard port conflict, through the real CLI and a detached daemon."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .views import corral, detached_stack, stack_toml


def _status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url.partition("#")[0] + "v1/stats")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dashboard_prints_its_url_and_rotates_the_token(tmp_path: Path) -> None:
    with detached_stack(tmp_path) as project:
        url = corral(project, "dashboard", "--url").strip()
        assert url.startswith("http://127.0.0.1:") and "/#token=" in url
        token = url.partition("#token=")[2]
        info = json.loads(corral(project, "dashboard", "--json"))
        assert info == {
            "listen": url.removeprefix("http://").partition("/")[0],
            "url": url,
            "token_file": str(project / ".corral" / "dashboard.token"),
            "socket": str(project / ".corral" / "corral.sock"),
        }
        assert (_status(url, None), _status(url, token)) == (401, 200)
        rotated = corral(project, "dashboard", "--url", "--rotate-token").strip()
        new = rotated.partition("#token=")[2]
        assert new != token
        assert (_status(url, token), _status(url, new)) == (401, 200)


def test_without_listen_it_says_how_to_reach_the_socket(tmp_path: Path) -> None:
    text = stack_toml(dashboard=False)
    with detached_stack(tmp_path, text) as project:
        env = {**os.environ, "NO_COLOR": "1"}
        env.pop("CORRAL_SOCKET", None)
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "dashboard"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert result.returncode == 1 and result.stdout == ""
        sock = project / ".corral" / "corral.sock"
        assert result.stderr == (
            "corral: the dashboard is on the control socket only; set [dashboard] listen "
            '(e.g. listen = "127.0.0.1:9100") and restart the daemon, or forward the socket: '
            f"ssh -L 9100:{sock} HOST, then open http://localhost:9100/\n"
        )


@pytest.mark.timeout(120)
def test_up_fails_with_the_reason_when_the_dashboard_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = stack_toml().replace(
            '[dashboard]\nlisten = "127.0.0.1:0"', f"[dashboard]\nlisten = {port}"
        )
        (tmp_path / "corral.toml").write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "up", "-d"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    # The listener opens before the control socket answers, so `up -d` sees the daemon exit
    # with this reason rather than a stack that is shutting down.
    assert result.stderr.splitlines()[-1] == (
        f"corral: dashboard cannot listen on 127.0.0.1:{port} "
        f"([dashboard] listen in {tmp_path / 'corral.toml'}): Address already in use"
    )
    assert not (tmp_path / ".corral" / "corral.sock").exists()
