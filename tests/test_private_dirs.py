"""The state dir and the /tmp socket fallback are private, and nobody else's is trusted.

The attacks are played by a real second uid (65534, via setpriv): it plants a symlink or a
directory of its own where root's daemon would put its socket.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import config
from supervisor.errors import UnsafeDirectory
from supervisor.privatedir import make_private_dir, make_shared_tmp_dir

from .conftest import web_command
from .test_cli import corral, ps

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to act as a second uid",
)

SERVICE = f"""
[services.web]
{web_command()}
port = "auto"
venv = false
health = {{ http = "/healthz", interval = "200ms", timeout = "150ms" }}
"""


def as_nobody(*argv: str) -> None:
    subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        check=True,
        timeout=10,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory like /tmp (1777, under /tmp so another uid can reach it): CORRAL_TMPDIR."""
    path = Path(tempfile.mkdtemp(prefix="corral-shared-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def long_project(tmp_path: Path) -> Path:
    """A project whose .corral/corral.sock is too long for AF_UNIX: the socket goes to /tmp."""
    project = tmp_path / ("p" * 110)
    project.mkdir()
    (project / "corral.toml").write_text(SERVICE)
    return project


def tmp_dir_of(project: Path, shared: Path) -> Path:
    plan = config.load(project / "corral.toml", environ={"CORRAL_TMPDIR": str(shared)})
    assert plan.daemon.socket.parent == shared / f"corral-{os.geteuid()}"
    return plan.daemon.socket.parent


def run_corral(project: Path, shared: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "CORRAL_TMPDIR": str(shared)}
    env.pop("CORRAL_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@needs_root
@pytest.mark.parametrize("plant", ["symlink", "their-directory"])
def test_tmp_socket_dir_planted_by_another_user_is_refused(
    tmp_path: Path, shared: Path, plant: str
) -> None:
    project = long_project(tmp_path)
    socket_dir = tmp_dir_of(project, shared)
    victim = shared / "victim"  # stands for /etc: root-owned, 0755
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    if plant == "symlink":
        as_nobody("ln", "-s", str(victim), str(socket_dir))
    else:
        as_nobody("mkdir", "-m", "0777", str(socket_dir))

    # The daemon itself refuses (`corral daemon`, as systemd runs it) ...
    daemon = run_corral(project, shared, "daemon")
    assert daemon.returncode == 1, daemon
    assert "Traceback" not in daemon.stderr
    reason = "symlink" if plant == "symlink" else f"owned by uid {NOBODY}"
    assert reason in daemon.stderr and str(socket_dir) in daemon.stderr
    # ... and so does the CLI, in one line, before it starts anything.
    up = run_corral(project, shared, "up", "-d")
    assert up.returncode == 1
    assert up.stderr.count("\n") == 1 and reason in up.stderr, up.stderr
    ps = run_corral(project, shared, "ps")
    assert ps.returncode == 1 and reason in ps.stderr
    # Nothing of the target was changed, nothing was put in it.
    assert mode(victim) == 0o755 and list(victim.iterdir()) == []
    if plant == "their-directory":
        assert mode(socket_dir) == 0o777 and os.lstat(socket_dir).st_uid == NOBODY


def test_tmp_socket_dir_with_an_open_mode_is_refused_not_repaired(
    tmp_path: Path, shared: Path
) -> None:
    project = long_project(tmp_path)
    socket_dir = tmp_dir_of(project, shared)
    socket_dir.mkdir()
    os.chmod(socket_dir, 0o755)
    daemon = run_corral(project, shared, "daemon")
    assert daemon.returncode == 1
    assert f"{socket_dir} has mode 0755; expected 0700" in daemon.stderr
    assert mode(socket_dir) == 0o755


def test_tmp_socket_dir_is_created_0700_and_used(tmp_path: Path, shared: Path) -> None:
    project = long_project(tmp_path)
    socket_dir = tmp_dir_of(project, shared)
    try:
        up = run_corral(project, shared, "up", "-d")
        assert up.returncode == 0, up.stderr
        assert mode(socket_dir) == 0o700 and os.lstat(socket_dir).st_uid == os.geteuid()
        sockets = list(socket_dir.iterdir())
        assert len(sockets) == 1 and mode(sockets[0]) == 0o600
        assert run_corral(project, shared, "ps").returncode == 0
    finally:
        run_corral(project, shared, "down")
    assert list(socket_dir.iterdir()) == []


def test_make_shared_tmp_dir_refuses_a_file(tmp_path: Path) -> None:
    planted = tmp_path / "corral-0"
    planted.write_text("")
    with pytest.raises(UnsafeDirectory, match="symlink or a file"):
        make_shared_tmp_dir(planted)


@needs_root
def test_state_dir_symlinked_to_an_open_directory_is_refused_not_chmodded(
    tmp_path: Path, shared: Path
) -> None:
    target = shared / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o755)
    state = tmp_path / "state"
    state.symlink_to(target)
    with pytest.raises(UnsafeDirectory, match="symlink to a directory with mode 0755"):
        make_private_dir(state)
    assert mode(target) == 0o755
    os.chmod(target, 0o700)
    make_private_dir(state)  # a symlink to a private directory of ours is fine


@needs_root
def test_state_dir_owned_by_another_user_is_refused(tmp_path: Path, shared: Path) -> None:
    theirs = shared / "theirs"
    as_nobody("mkdir", "-m", "0700", str(theirs))
    with pytest.raises(UnsafeDirectory, match=f"owned by uid {NOBODY}"):
        make_private_dir(theirs)


def test_world_writable_state_dir_is_refused(tmp_path: Path, shared: Path) -> None:
    (tmp_path / "corral.toml").write_text(f'[daemon]\nstate_dir = "{shared}"\n{SERVICE}')
    result = corral(tmp_path, "up", "-d", check=False)
    assert result.returncode == 1
    assert f"{shared} is world-writable" in result.stderr
    assert mode(shared) == 0o1777


def test_state_dir_logs_and_token_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """0700/0600 with a socket outside the state dir, under umask 000, over older files."""
    project = tmp_path / "project"
    (project / ".corral" / "logs").mkdir(parents=True, mode=0o700)
    os.chmod(project / ".corral", 0o755)  # as an older Corral left it
    old_log = project / ".corral" / "logs" / "web.1.log"
    old_log.write_text("old line\n")
    os.chmod(old_log, 0o644)
    sockets = tmp_path / "sockets"
    (project / "corral.toml").write_text(f'[daemon]\nsocket = "{sockets}/web.sock"\n{SERVICE}')
    env = {**os.environ, "NO_COLOR": "1"}
    up = subprocess.run(
        ["sh", "-c", 'umask 000; exec "$0" -m supervisor up -d', sys.executable],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    try:
        assert up.returncode == 0, up.stderr
        state = project / ".corral"
        assert mode(state) == 0o700
        assert mode(state / "logs") == 0o700
        for name in ("state.json", "daemon.lock", "daemon.log"):
            assert mode(state / name) == 0o600, name
        assert "token" in json.loads((state / "state.json").read_text())
        logs = list((state / "logs").glob("*.log"))
        assert old_log in logs and old_log.read_text().count("\n") > 1  # reopened, appended
        assert all(mode(log) == 0o600 for log in logs), [(p, oct(mode(p))) for p in logs]
        assert mode(sockets) == 0o700 and mode(sockets / "web.sock") == 0o600
        assert [r["state"] for r in ps(project)] == ["ready"]
    finally:
        corral(project, "down", check=False)
