"""The daemon in the environment and sandbox the generated system unit gives it builds venvs.

A system unit has no $HOME, so uv would fall back to /root/.cache/uv, which ProtectHome=
makes read-only: "Read-only file system (os error 30)", and no service with a venv (the
default) could start. Here the unit's sandbox is rebuilt with a private mount namespace
(`unshare -m`, root only; PID 1 here is not systemd) in which /root and /home are read-only,
and the daemon gets only the variables systemd sets; a real venv is built with uv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.venv import MARKER

from .capabilities import require_root, require_tool
from .conftest import write_config
from .test_socket_activation import _stop

HOMES = [h for h in ("/root", "/home") if os.path.isdir(h)]


def _sandboxed(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`argv` with /root and /home read-only (ProtectHome=read-only) and env as its only
    environment. The shell execs the daemon, so the pid is the daemon's."""
    unshare = require_tool("unshare", "root")
    mounts = " && ".join(f"mount --bind {h} {h} && mount -o remount,bind,ro {h}" for h in HOMES)
    script = f'{mounts} && exec env -i "$@"'
    assigns = [f"{k}={v}" for k, v in env.items()]
    with log.open("wb") as out:
        return subprocess.Popen(
            [unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh", *assigns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.parametrize("cache_directory", [True, False], ids=["CACHE_DIRECTORY", "no-cache-dir"])
def test_a_venv_builds_under_the_system_units_sandbox(
    tmp_path: Path, cache_directory: bool
) -> None:
    require_root()
    project = tmp_path / "project"
    project.mkdir()
    path = write_config(
        project,
        'project = "x"\n[services.w]\n'
        'command = ["python", "-c", "import sys, time; print(sys.prefix, flush=True); time.sleep(600)"]\n',
    )  # venv = true: the default
    dirs = {name: tmp_path / name for name in ("state", "logs", "run", "cache")}
    for d in dirs.values():
        d.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",  # systemd's default PATH has no uv: the `uv` package finds it
        "CORRAL_UNIT": "corral-x.service",
        "STATE_DIRECTORY": str(dirs["state"]),
        "LOGS_DIRECTORY": str(dirs["logs"]),
        "RUNTIME_DIRECTORY": str(dirs["run"]),
        "LANG": "C.UTF-8",
    }
    if cache_directory:
        env["CACHE_DIRECTORY"] = str(dirs["cache"])
    cache = dirs["cache"] if cache_directory else dirs["state"] / "cache"
    log = tmp_path / "daemon.log"
    proc = _sandboxed([sys.executable, "-m", "supervisor", "daemon", "-f", str(path)], env, log)
    try:
        venvs = dirs["state"] / "venvs"
        deadline = time.monotonic() + 50
        while not (venvs.is_dir() and any((v / MARKER).is_file() for v in venvs.iterdir())):
            assert proc.poll() is None, log.read_text()
            assert "virtualenv build failed" not in log.read_text(), log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert "with uv" in text, text  # (the pip fallback caches nothing without requirements)
        assert (cache / "uv").is_dir(), (list(cache.parent.iterdir()), text)
        (venv,) = venvs.iterdir()
        info = json.loads((venv / MARKER).read_text())
        assert info["service"] == "w"
        # The instance runs from it.
        instance_log = dirs["logs"] / "w.1.log"
        while f"stdout {venv}" not in (instance_log.read_text() if instance_log.exists() else ""):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()
