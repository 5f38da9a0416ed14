"""The `corral` command end to end: a detached daemon, the CLI over its socket, clean exits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import pid_alive, token_processes, web_command, write_config

CORRAL = [sys.executable, "-m", "supervisor"]


def corral(
    cwd: Path, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CORRAL_SOCKET", None)
    result = subprocess.run(
        [*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"corral {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def ps(cwd: Path) -> list[dict[str, Any]]:
    rows = json.loads(corral(cwd, "ps", "--json").stdout)
    assert isinstance(rows, list)
    return rows


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


STACK = """
[services.web]
{web}
instances = 2
port = "auto"
venv = false
health = {{ http = "/healthz", interval = "300ms", timeout = "200ms" }}

[services.worker]
command = ["{py}", "-c", "import time\\nwhile True: print('tick', flush=True); time.sleep(0.2)"]
venv = false
stop_timeout = "1s"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_config(tmp_path, STACK.format(web=web_command(), py=sys.executable))
    return tmp_path


def _daemon_pid(project: Path) -> int:
    return int((project / ".corral" / "daemon.lock").read_text())


def _stop(project: Path) -> None:
    if (project / ".corral" / "corral.sock").exists():
        corral(project, "down", check=False)


def test_up_detached_ps_logs_scale_down(project: Path) -> None:
    try:
        up = corral(project, "up", "-d")
        assert "web.1" in up.stdout and "ready" in up.stdout
        rows = ps(project)
        assert [r["name"] for r in rows] == ["web.1", "web.2", "worker.1"]
        for row in rows:
            for key in (
                "service",
                "index",
                "pid",
                "port",
                "state",
                "ready",
                "restarts",
                "uptime_s",
                "cpu_percent",
                "rss_bytes",
            ):
                assert key in row, key
        assert {r["state"] for r in rows} == {"ready", "running"}
        assert rows[0]["port"] != rows[1]["port"]
        assert all(r["rss_bytes"] > 0 for r in rows)

        wait_for(lambda: "tick" in corral(project, "logs", "-n", "5", "worker").stdout, what="logs")
        out = corral(project, "logs", "-n", "3", "worker").stdout.splitlines()
        assert len(out) == 3 and all(line.startswith("worker.1") for line in out)

        corral(project, "scale", "web=3")
        wait_for(
            lambda: [r["state"] for r in ps(project) if r["service"] == "web"] == ["ready"] * 3,
            what="3 web instances ready",
        )

        token = json.loads((project / ".corral" / "state.json").read_text())["token"]
        pids = [r["pid"] for r in ps(project)]
        daemon = _daemon_pid(project)
        down = corral(project, "down")
        assert "stopped" in down.stdout
        assert not pid_alive(daemon)
        assert not any(pid_alive(p) for p in pids)
        assert token_processes(token) == []
        assert not (project / ".corral" / "corral.sock").exists()
    finally:
        _stop(project)


def test_no_daemon_is_one_clear_line(project: Path) -> None:
    result = corral(project, "ps", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no corral daemon is running" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_config_errors_with_file_and_key(tmp_path: Path) -> None:
    write_config(tmp_path, '[services.api]\ncommand = "x"\ninstances = "three"\n')
    result = corral(tmp_path, "check", check=False)
    assert result.returncode == 2
    assert (
        "corral.toml: services.api.instances: expected an integer from 0 to 1000" in result.stderr
    )


def test_daemon_killed_hard_leaves_nothing_running_twice(project: Path) -> None:
    try:
        corral(project, "up", "-d")
        first = ps(project)
        old_pids = {r["pid"] for r in first}
        os.kill(_daemon_pid(project), signal.SIGKILL)
        # Instances must not run on unsupervised: they die with the daemon (PDEATHSIG) ...
        wait_for(lambda: not any(pid_alive(p) for p in old_pids), what="orphans to die")
        # ... and a new daemon starts exactly N per service, each port used once.
        corral(project, "up", "-d")
        rows = ps(project)
        assert sorted(r["name"] for r in rows) == ["web.1", "web.2", "worker.1"]
        assert not old_pids & {r["pid"] for r in rows}
        ports = [r["port"] for r in rows if r["port"]]
        assert len(ports) == len(set(ports))
        token = json.loads((project / ".corral" / "state.json").read_text())["token"]
        ours = {p.pid for p in token_processes(token)}
        assert ours == {r["pid"] for r in rows}
    finally:
        _stop(project)


def test_stale_instances_of_a_dead_daemon_are_cleaned_up(project: Path) -> None:
    """Even if an instance survives its daemon (it ignores SIGTERM), the next daemon stops it."""
    stubborn = (
        f'\n[services.stubborn]\ncommand = ["{sys.executable}", "-c", '
        '"import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(600)"]\n'
        'venv = false\nstop_timeout = "300ms"\n'
    )
    with open(project / "corral.toml", "a") as f:
        f.write(stubborn)
    try:
        corral(project, "up", "-d")
        survivor = next(r["pid"] for r in ps(project) if r["service"] == "stubborn")
        os.kill(_daemon_pid(project), signal.SIGKILL)
        assert pid_alive(survivor)
        corral(project, "up", "-d")
        assert not pid_alive(survivor)
        assert sum(1 for r in ps(project) if r["service"] == "stubborn") == 1
    finally:
        _stop(project)


def test_control_socket_permissions_and_peer_uid() -> None:
    # Its own project under /tmp, so that another uid can reach the socket's directory at all.
    project = Path(tempfile.mkdtemp(prefix="corral-uid-", dir="/tmp"))
    os.chmod(project, 0o755)
    write_config(project, STACK.format(web=web_command(), py=sys.executable))
    try:
        corral(project, "up", "-d")
        sock = project / ".corral" / "corral.sock"
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        if os.getuid() != 0:
            pytest.skip("needs root to act as another uid")
        # Loosen the file modes by hand: the peer-uid check must still refuse a stranger.
        os.chmod(sock.parent, 0o755)
        os.chmod(sock, 0o666)
        code = (
            "import os, socket; os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX);"
            f"s.connect({str(sock)!r}); s.sendall(b'GET /v1/ps HTTP/1.0\\r\\n\\r\\n');"
            "print(s.recv(100).decode().split('\\r\\n')[0])"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=10
        )
        assert out.stdout.strip() == "HTTP/1.0 403 Forbidden", out
        os.chmod(sock.parent, 0o700)
        os.chmod(sock, 0o600)
        # With the modes as Corral sets them, the stranger cannot even connect.
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=10
        )
        assert "PermissionError" in out.stderr
    finally:
        _stop(project)
        shutil.rmtree(project, ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_foreground_up_stops_everything(project: Path, sig: signal.Signals) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [*CORRAL, "up"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("worker.1") and "tick" in line:
                break
        rows = ps(project)
        pids = [r["pid"] for r in rows if r["pid"]]
        assert pids
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert proc.returncode == 0
        assert not any(pid_alive(p) for p in pids)
        assert any(line.startswith("web.1    | ") or line.startswith("web.1 ") for line in seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_scale_rejects_bad_arguments(project: Path) -> None:
    result = corral(project, "scale", "web=lots", check=False)
    assert result.returncode == 1
    assert "expected SERVICE=N" in result.stderr


def test_scale_save_keeps_comments_and_events_stream_json(project: Path) -> None:
    path = project / "corral.toml"
    path.write_text(
        "# the team's notes: keep me\n"
        + path.read_text().replace(
            "instances = 2\n", "instances = 2  # two is plenty on a laptop\n"
        )
    )
    try:
        corral(project, "up", "-d")
        corral(project, "scale", "web=3", "--save")
        text = path.read_text()
        assert text.startswith("# the team's notes: keep me\n")
        assert "instances = 3  # two is plenty on a laptop" in text
        assert corral(project, "check").returncode == 0
        events = [
            json.loads(line)
            for line in corral(project, "events", "--json", "-n", "200").stdout.splitlines()
        ]
        assert {"kind", "service", "instance", "old", "new", "pid", "port", "ts"} <= set(events[0])
        assert any(
            e["kind"] == "scale" and e["service"] == "web" and e["new"] == "3" for e in events
        )
        # A saved count is config, not a runtime override: a restarted daemon runs 3 from the file.
        corral(project, "down")
        corral(project, "up", "-d")
        assert sum(1 for r in ps(project) if r["service"] == "web") == 3
    finally:
        _stop(project)


def test_broken_config_on_disk_does_not_lock_out_the_running_daemon(project: Path) -> None:
    path = project / "corral.toml"
    good = path.read_text()
    try:
        corral(project, "up", "-d")
        path.write_text(good + "\n[services.web\n")  # a syntax error
        assert len(ps(project)) == 3
        reload = corral(project, "reload", check=False)
        assert reload.returncode == 1
        assert "config not reloaded, nothing changed" in reload.stderr
        assert "line" in reload.stderr  # tomllib's position survives
        assert len(ps(project)) == 3
    finally:
        path.write_text(good)
        _stop(project)


def test_down_ends_live_followers(project: Path) -> None:
    try:
        corral(project, "up", "-d")
        followers = [
            subprocess.Popen([*CORRAL, *args], cwd=project, stdout=subprocess.PIPE, text=True)
            for args in (["logs", "-f"], ["events", "-f"])
        ]
        try:
            wait_for(lambda: len(ps(project)) == 3, what="daemon answering")
            # Connected (their history arrived) before the daemon goes: on a loaded machine a
            # follower's interpreter can take longer to start than `down` takes to finish.
            for follower in followers:
                assert follower.stdout is not None and follower.stdout.readline()
            corral(project, "down", "--timeout", "30")
            for follower in followers:
                assert follower.wait(timeout=10) == 0
        finally:
            for follower in followers:
                if follower.poll() is None:
                    follower.kill()
                    follower.wait()
                if follower.stdout is not None:
                    follower.stdout.close()
    finally:
        _stop(project)


def test_corral_proxy_alone_balances_static_backends(tmp_path: Path) -> None:
    from supervisor.ports import free_port

    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "CORRAL_SERVICE": "b"}
    backends = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "apps" / "web.py")],
            env={**env, "PORT": str(port), "CORRAL_INSTANCE": str(i)},
            stdout=subprocess.DEVNULL,
        )
        for i, port in enumerate(ports[:2], start=1)
    ]
    args = ["proxy", "--listen", f"127.0.0.1:{ports[2]}"]
    for port in ports[:2]:
        args += ["--backend", f"127.0.0.1:{port}"]
    proxy = subprocess.Popen([*CORRAL, *args], cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        seen: set[str] = set()

        def fetch() -> bool:
            import urllib.request

            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/", timeout=2) as r:
                    seen.add(json.loads(r.read())["instance"])
            except OSError:
                return False
            return seen == {"b.1", "b.2"}

        wait_for(fetch, what="both backends answering through `corral proxy`")
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(timeout=15) == 0
    finally:
        for p in [proxy, *backends]:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_sighup_reloads_the_config(project: Path) -> None:
    try:
        corral(project, "up", "-d")
        with open(project / "corral.toml", "a") as f:
            f.write(
                f'\n[services.extra]\ncommand = ["{sys.executable}", "-c", "import time; time.sleep(60)"]\n'
                "venv = false\n"
            )
        os.kill(_daemon_pid(project), signal.SIGHUP)
        wait_for(
            lambda: any(r["name"] == "extra.1" and r["state"] == "running" for r in ps(project)),
            what="the service added by SIGHUP reload",
        )
        events = corral(project, "events", "--json", "-n", "100").stdout
        assert '"kind": "reload"' in events and "+ extra: new service, starting" in events
    finally:
        _stop(project)
