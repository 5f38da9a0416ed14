"""cgroup caps (`cgroup = { memory_max, cpu_max, pids_max }`) per instance.

On the real hierarchy, what happens here is tested for real: with the controllers delegated
the caps are written and read back from the instance's cgroup; without them (this kind of
host: cgroup2 with no controllers, they live in cgroup v1) they are reported not applied —
once in the daemon log per service, in `ps` and in `status` — and the instance runs anyway.
What `enable()` writes when controllers exist is tested on a scratch directory laid out like
a cgroup, since no kernel cgroup here offers them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from config.model import CgroupLimits
from supervisor.cgroup import CgroupTree, InstanceCgroup, cap_files, detect
from supervisor.output import ps_table, status_text

from .conftest import PY, rows_of, running_daemon, state_of, wait_until, write_config

CAPPED = f"""
[services.api]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"
cgroup = {{ memory_max = "256MB", cpu_max = 0.5, pids_max = 64 }}
"""


def test_cap_files() -> None:
    caps = CgroupLimits(memory_max=256 << 20, cpu_max=1.5, pids_max=64)
    assert cap_files(caps) == {
        "memory.max": str(256 << 20),
        "cpu.max": "150000 100000",
        "pids.max": "64",
    }
    assert cap_files(CgroupLimits()) == {}


async def test_caps_on_this_hierarchy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    verdict = detect()
    if verdict.directory is None:
        pytest.skip(f"no cgroup v2 of our own here ({verdict.reason}); see the token test")
    available = set((verdict.directory / "cgroup.controllers").read_text().split())
    path = write_config(tmp_path, CAPPED)
    caplog.set_level(logging.WARNING, logger="supervisor.scope")
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "api.1") == "running")
        row = rows_of(daemon, "api")[0]
        status = daemon.status()
        cgroup = Path(status["containment"].split(" ", 1)[1]) / "api.1-1"
        if {"memory", "cpu", "pids"} <= available:
            assert row["caps"] == f"memory.max={256 << 20}; cpu.max=50000 100000; pids.max=64"
            assert (cgroup / "memory.max").read_text().strip() == str(256 << 20)
            assert (cgroup / "cpu.max").read_text().strip() == "50000 100000"
            assert (cgroup / "pids.max").read_text().strip() == "64"
            return
        # No controllers to cap with: the instance runs uncapped, and everyone is told.
        shown = " ".join(sorted(available)) or "none"
        why = (
            f"no cpu, memory, pids controller in {verdict.directory} "
            f"(its cgroup.controllers: {shown})"
        )
        assert row["caps"] == f"memory.max, cpu.max, pids.max not applied: {why}"
        assert "caps not applied: no cpu, memory, pids controller" in ps_table(daemon.ps())
        assert status["services"]["api"]["caps"] == row["caps"]
        assert "cgroup caps\n  api  memory.max, cpu.max, pids.max not applied" in status_text(
            status, daemon.ps()
        )
        assert not (cgroup / "memory.max").exists()
        # Once per service, not once per instance or restart.
        await daemon.restart(["api"])
        warnings = [r.getMessage() for r in caplog.records if "caps not applied" in r.getMessage()]
        assert warnings == [
            f"api: cgroup caps not applied (memory.max={256 << 20}, cpu.max=50000 100000, "
            f"pids.max=64): {why}"
        ]


async def test_caps_without_cgroups_are_reported_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_CGROUP", "off")
    path = write_config(tmp_path, CAPPED)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "api.1") == "running")
        assert rows_of(daemon, "api")[0]["caps"] == (
            "memory.max, cpu.max, pids.max not applied: no per-instance cgroups: "
            "disabled by CORRAL_CGROUP=off"
        )


def _scratch(tmp_path: Path, controllers: str, procs: list[int]) -> Path:
    """A directory shaped like the daemon's cgroup D (plain files: see the module docstring)."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
    (own / "cgroup.subtree_control").write_text("")
    return own


def test_enable_moves_the_daemon_aside_and_delegates(tmp_path: Path) -> None:
    own = _scratch(tmp_path, "cpu memory pids io", [os.getpid()])
    tree = CgroupTree.create(own, "tok")
    (tree.root / "cgroup.subtree_control").write_text("")
    enabled = tree.enable(["memory", "pids"])
    assert enabled.controllers == {"memory", "pids"} and enabled.reason == ""
    assert (tree.root / "daemon" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (tree.root / "cgroup.subtree_control").read_text() == "+memory +pids"
    # The instance cgroup then takes its caps.
    inst = InstanceCgroup(tree.root / "api.1-1")
    inst.path.mkdir()
    for name, value in cap_files(CgroupLimits(memory_max=1 << 30, pids_max=5)).items():
        inst.limit(name, value)
    assert (inst.path / "memory.max").read_text() == str(1 << 30)
    assert (inst.path / "pids.max").read_text() == "5"


def test_enable_says_what_is_missing(tmp_path: Path) -> None:
    own = _scratch(tmp_path, "cpu", [os.getpid()])
    tree = CgroupTree.create(own, "tok")
    (tree.root / "cgroup.subtree_control").write_text("")
    enabled = tree.enable(["memory", "cpu"])
    assert enabled.controllers == {"cpu"}
    assert enabled.reason == f"no memory controller in {own} (its cgroup.controllers: cpu)"


def test_enable_never_moves_other_processes(tmp_path: Path) -> None:
    own = _scratch(tmp_path, "memory", [os.getpid(), 1])
    tree = CgroupTree.create(own, "tok")
    enabled = tree.enable(["memory"])
    assert enabled.controllers == frozenset()
    assert "holds 1 other process(es)" in enabled.reason
    assert not (tree.root / "daemon").exists()
    assert (own / "cgroup.subtree_control").read_text() == ""
