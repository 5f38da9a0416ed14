"""`user` / `group` and `rlimits`: a real instance run as nobody (its uid read back with
psutil, its venv and log file the user's), rlimits read back from /proc/PID/limits, and the
refusals: a daemon that is not root, a user who cannot reach the working directory."""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import config
from supervisor.rlimits import may_raise
from supervisor.runas import RunAs, obstacle

from .capabilities import require_root, require_tool
from .conftest import PY, rows_of, running_daemon, state_of, wait_until, write_config

SLEEPER = "import os, time; print('uid', os.getuid(), flush=True); time.sleep(600)"


def _nobody() -> RunAs:
    pw = pwd.getpwnam("nobody")
    return RunAs("nobody", pw.pw_uid, pw.pw_gid, (pw.pw_gid,), pw.pw_dir)


def _python_for_nobody() -> str:
    """An interpreter nobody may run: ours, or the system's when ours sits in a private
    directory (pyenv under /root here)."""
    for candidate in (os.path.realpath(PY), "/usr/bin/python3"):
        if os.path.exists(candidate) and obstacle(Path(candidate).parent, _nobody()) is None:
            return candidate
    pytest.skip(f"no Python interpreter that nobody may run ({PY} is under a private directory)")


@contextlib.contextmanager
def open_project() -> Iterator[Path]:
    """A project directory other users may enter (pytest's tmp_path is under a 0700 one)."""
    root = Path(tempfile.mkdtemp(prefix="corral-runas-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_an_instance_runs_as_nobody_with_its_venv_and_log(tmp_path: Path) -> None:
    require_root()
    python = _python_for_nobody()
    nobody = _nobody()
    with open_project() as root:
        path = write_config(
            root,
            f"""
[services.api]
command = ["python", "-c", "{SLEEPER}"]
python = "{python}"
user = "nobody"
min_uptime = "100ms"
rlimits = {{ nofile = [1000, 2000], core = 0 }}
""",
        )
        plan = config.load(path)
        async with running_daemon(path) as daemon:
            await wait_until(lambda: state_of(daemon, "api.1") == "running", timeout=90)
            pid = rows_of(daemon, "api")[0]["pid"]
            assert isinstance(pid, int)
            proc = psutil.Process(pid)
            assert proc.uids().real == proc.uids().effective == nobody.uid
            assert proc.gids().real == proc.gids().effective == nobody.gid
            assert proc.environ()["USER"] == "nobody"
            assert proc.environ()["HOME"] == nobody.home
            # It runs from its venv, which is nobody's, reached through a 0711 state dir.
            venv = Path(proc.environ()["VIRTUAL_ENV"])
            assert venv.parent.parent == plan.daemon.state_dir
            assert os.stat(venv).st_uid == nobody.uid
            assert os.stat(venv / "pyvenv.cfg").st_uid == nobody.uid
            assert stat.S_IMODE(os.stat(plan.daemon.state_dir).st_mode) == 0o711
            log = plan.daemon.logs_dir / "api.1.log"
            await wait_until(lambda: log.exists() and "uid 65534" in log.read_text())
            assert (os.stat(log).st_uid, os.stat(log).st_gid) == (nobody.uid, nobody.gid)
            assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
            # The rlimits, read back from the kernel.
            limits = _limits(pid)
            assert limits["Max open files"] == ("1000", "2000")
            assert limits["Max core file size"] == ("0", "0")


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits: {"Max open files": (soft, hard), ...}."""
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    out = {}
    for line in lines:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


async def test_rlimits_without_run_as(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f"""
[services.job]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"
rlimits = {{ nofile = [256, 512], stack = "4MB" }}
""",
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "job.1") == "running")
        pid = rows_of(daemon, "job")[0]["pid"]
        assert isinstance(pid, int)
        limits = _limits(pid)
        assert limits["Max open files"] == ("256", "512")
        assert limits["Max stack size"] == (str(4 << 20), str(4 << 20))


async def test_a_hard_limit_above_the_daemons_needs_cap_sys_resource(tmp_path: Path) -> None:
    _, ours = resource.getrlimit(resource.RLIMIT_NPROC)
    wanted = "unlimited" if ours != resource.RLIM_INFINITY else ours
    path = write_config(
        tmp_path,
        f"""
[services.job]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"
rlimits = {{ nproc = "{wanted}" }}
""",
    )
    async with running_daemon(path) as daemon:
        if may_raise():
            await wait_until(lambda: state_of(daemon, "job.1") == "running")
            pid = rows_of(daemon, "job")[0]["pid"]
            assert isinstance(pid, int)
            assert _limits(pid)["Max processes"] == ("unlimited", "unlimited")
        else:
            # Root without CAP_SYS_RESOURCE (a container's), or not root: refused up front.
            await wait_until(lambda: state_of(daemon, "job.1") == "failed")
            assert rows_of(daemon, "job")[0]["detail"] == (
                f"services.job.rlimits.nproc: hard limit unlimited is above the daemon's own "
                f"({ours}), and only a daemon with CAP_SYS_RESOURCE (root, outside a "
                "container that drops it) may raise it"
            )


def test_cap_sys_resource_is_read_from_capeff() -> None:
    assert may_raise("Name:\tx\nCapEff:\t000001ffffffffff\n")
    assert not may_raise("Name:\tx\nCapEff:\t000001fffeffffff\n")  # bit 24 cleared


async def test_a_user_who_cannot_reach_the_cwd_fails_the_service_clearly(tmp_path: Path) -> None:
    require_root()
    python = _python_for_nobody()
    with open_project() as root:
        private = root / "private"
        (private / "app").mkdir(parents=True)
        os.chmod(private, 0o700)
        path = write_config(
            root,
            f"""
[services.api]
command = ["{python}", "-c", "{SLEEPER}"]
cwd = "private/app"
venv = false
user = "nobody"
""",
        )
        async with running_daemon(path) as daemon:
            await wait_until(lambda: state_of(daemon, "api.1") == "failed")
            detail = str(rows_of(daemon, "api")[0]["detail"])
            assert detail == (
                f"services.api.user: nobody cannot reach {private / 'app'}: nobody may not "
                f"enter {private} (mode 0700, owner uid 0, group gid 0)"
            )


def test_a_daemon_that_is_not_root_refuses_run_as(tmp_path: Path) -> None:
    require_root()  # to become someone else
    setpriv = require_tool("setpriv", "root")
    nobody = _nobody()
    with open_project() as root:
        write_config(
            root,
            f"""
[services.api]
command = ["{PY}", "-c", "{SLEEPER}"]
venv = false
user = "daemon"

[services.ok]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"
""",
        )
        os.chown(root, nobody.uid, nobody.gid)  # the state dir is the daemon's own
        cmd = [setpriv, f"--reuid={nobody.uid}", f"--regid={nobody.gid}", "--clear-groups"]
        if obstacle(Path(os.path.realpath(PY)).parent, nobody) is not None:
            # Our interpreter is in a private directory (pyenv under /root): let the daemon
            # read it. It is still uid 65534 for every other purpose, the root check included.
            cmd += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        up = subprocess.run(
            [*cmd, PY, "-m", "supervisor", "up", "-d", "--timeout", "30"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "CORRAL_TMPDIR": str(root)},
        )
        try:
            assert up.returncode == 1, up
            assert "failed: api.1 (see `corral logs api`)" in up.stderr
            ps = subprocess.run(
                [*cmd, PY, "-m", "supervisor", "ps", "--json"],
                cwd=root,
                capture_output=True,
                text=True,
                env={**os.environ, "CORRAL_TMPDIR": str(root)},
            )
            import json

            rows = {r["name"]: r for r in json.loads(ps.stdout)}
            assert rows["ok.1"]["state"] == "running"  # the others run on
            assert rows["api.1"]["state"] == "failed"
            assert rows["api.1"]["detail"] == (
                'services.api.user: running as "daemon" needs a daemon running as root, and '
                "this one runs as uid 65534 (nobody); start it as root (the system unit from "
                "`corral systemd-unit` does) or remove user/group"
            )
        finally:
            subprocess.run(
                [*cmd, PY, "-m", "supervisor", "down"],
                cwd=root,
                capture_output=True,
                timeout=90,
                env={**os.environ, "CORRAL_TMPDIR": str(root)},
            )
            _wait_no_daemon(root)


def _wait_no_daemon(root: Path) -> None:
    deadline = time.monotonic() + 30
    while any(p.info["cwd"] == str(root) for p in psutil.process_iter(["cwd"]) if p.info["cwd"]):
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)


async def test_an_unknown_user_fails_the_service_alone(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f"""
[services.api]
command = ["{PY}", "-c", "pass"]
venv = false
user = "corral-no-such-user"

[services.ok]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"
""",
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "api.1") == "failed")
        await wait_until(lambda: state_of(daemon, "ok.1") == "running")
        assert rows_of(daemon, "api")[0]["detail"] == (
            'services.api.user: no user "corral-no-such-user" on this machine'
        )


def test_chown_tree_changes_links_never_what_they_point_to(tmp_path: Path) -> None:
    require_root()
    from supervisor.runas import chown_tree

    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "secret"
    target.write_text("root's")
    venv = tmp_path / "venv"
    (venv / "lib" / "deep").mkdir(parents=True)
    (venv / "lib" / "deep" / "module.py").write_text("")
    (venv / "link-to-file").symlink_to(target)
    (venv / "link-to-dir").symlink_to(outside)
    who = _nobody()
    chown_tree(venv, who)
    for path in (venv, venv / "lib", venv / "lib" / "deep", venv / "lib" / "deep" / "module.py"):
        assert path.lstat().st_uid == who.uid, path
    for link in (venv / "link-to-file", venv / "link-to-dir"):
        assert link.lstat().st_uid == who.uid, link
    assert target.stat().st_uid == 0 and outside.stat().st_uid == 0
