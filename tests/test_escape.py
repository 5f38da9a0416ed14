"""Grandchildren that escape (double fork + setsid) are stopped with their own instance."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from supervisor.cgroup import decide, detect, mount_point, own_cgroup

from .conftest import PY, pid_alive, running_daemon, state_of, wait_until, write_config

# The leader forks a child that calls setsid and forks the grandchild, then exits: the
# grandchild is in another session and process group, and reparented away from the leader's
# tree. It ignores SIGTERM, and records its pid.
ESCAPER = """
import os, signal, sys, time
index = os.environ["CORRAL_INSTANCE"]
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(f"escaped.{index}", "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(3600)
    os._exit(0)
os.waitpid(child, 0)
time.sleep(3600)
"""

MODES = ["cgroup", "token"]


def _cgroups_here() -> bool:
    return os.geteuid() == 0 and detect({}).directory is not None


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cgroup":
        if not _cgroups_here():
            pytest.skip(f"needs a writable cgroup v2 of our own ({detect({}).reason})")
        monkeypatch.delenv("CORRAL_CGROUP", raising=False)
    else:
        monkeypatch.setenv("CORRAL_CGROUP", "off")
    return str(request.param)


def _members(cgroup: Path) -> set[int]:
    """Every pid in the daemon's instance cgroups."""
    return {
        int(pid)
        for child in cgroup.iterdir()
        if child.is_dir()
        for pid in (child / "cgroup.procs").read_text().split()
    }


def _exists(path: Path) -> bool:
    return path.exists()


def _escaped(tmp_path: Path, index: int = 1) -> list[int]:
    path = tmp_path / f"escaped.{index}"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def test_stop_and_restart_leave_no_escaped_grandchild(tmp_path: Path, mode: str) -> None:
    (tmp_path / "escaper.py").write_text(ESCAPER)
    path = write_config(
        tmp_path,
        f"""
[services.esc]
command = ["{PY}", "escaper.py"]
cwd = "{tmp_path}"
venv = false
stop_timeout = "1s"
min_uptime = "0s"
""",
    )
    async with running_daemon(path) as daemon:
        status = daemon.status()
        assert status["containment"].startswith(mode)
        await wait_until(lambda: len(_escaped(tmp_path)) == 1, what="the first grandchild")
        first = _escaped(tmp_path)[0]
        leader = daemon.services["esc"].instances[1].pid
        assert leader is not None
        # It really escaped: not in the leader's tree, not in its process group.
        assert first not in {p.pid for p in psutil.Process(leader).children(recursive=True)}
        assert os.getpgid(first) != os.getpgid(leader)
        if mode == "cgroup":
            cgroup = Path(status["containment"].split(" ", 1)[1])
            assert {leader, first} <= _members(cgroup)

        await daemon.restart(["esc"])  # a roll: the old incarnation is stopped
        await wait_until(lambda: not pid_alive(first), what="the first grandchild gone")
        await wait_until(lambda: len(_escaped(tmp_path)) == 2, what="the new one's grandchild")
        second = _escaped(tmp_path)[1]
        assert pid_alive(second)

        await daemon.stop(["esc"])
        assert state_of(daemon, "esc.1") == "stopped"
        assert not pid_alive(second)
        await daemon.start(["esc"])
        await wait_until(lambda: len(_escaped(tmp_path)) == 3)
        third = _escaped(tmp_path)[2]
    # Shutdown sweeps too, and removes the daemon's cgroups.
    assert not pid_alive(third)
    if mode == "cgroup":
        assert not _exists(cgroup)


def test_delegation_rules() -> None:
    mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\nproc /proc proc rw 0 0\n"
    assert mount_point(mounts) == Path("/sys/fs/cgroup")
    assert (
        own_cgroup("12:pids:/x\n0::/system.slice/corral.service\n")
        == "/system.slice/corral.service"
    )
    unit = "0::/system.slice/corral.service\n"
    # A systemd unit's cgroup is used only with Delegate=yes (systemd marks it) or when told.
    assert decide(mounts, unit, {}, writable=True, delegated_mark=False).directory is None
    assert decide(mounts, unit, {}, writable=True, delegated_mark=True).directory == Path(
        "/sys/fs/cgroup/system.slice/corral.service"
    )
    assert decide(
        mounts, unit, {"CORRAL_CGROUP": "on"}, writable=True, delegated_mark=False
    ).directory
    # Not ours to write, no cgroup2, or switched off: tokens.
    assert decide(mounts, unit, {}, writable=False, delegated_mark=True).directory is None
    assert (
        decide("proc /proc proc rw 0 0\n", unit, {}, writable=True, delegated_mark=True).directory
        is None
    )
    off = decide(mounts, "0::/\n", {"CORRAL_CGROUP": "off"}, writable=True, delegated_mark=False)
    assert off.directory is None and "CORRAL_CGROUP=off" in off.reason
    # A container's own cgroup namespace ("/") or a plain shell's cgroup outside systemd: used.
    assert decide(mounts, "0::/\n", {}, writable=True, delegated_mark=False).directory == Path(
        "/sys/fs/cgroup"
    )


def test_empty_subtrees_of_dead_daemons_are_swept(tmp_path: Path) -> None:
    if not _cgroups_here():
        pytest.skip(f"needs a writable cgroup v2 of our own ({detect({}).reason})")
    import subprocess
    import sys

    from supervisor.cgroup import CgroupTree

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    own = detect({}).directory
    assert own is not None
    abandoned = own / f"corral-{gone.pid}-0123456789abcdef"
    live = own / f"corral-{os.getpid()}-fedcba9876543210"
    for path in (abandoned / "web.1-1", live / "web.1-1"):
        path.mkdir(parents=True)
    try:
        assert CgroupTree.sweep_abandoned(own) >= 1
        assert not _exists(abandoned)
        assert _exists(live)  # its daemon (this process) is alive: not ours to touch
    finally:
        for path in (live / "web.1-1", live, abandoned / "web.1-1", abandoned):
            if _exists(path):
                path.rmdir()
