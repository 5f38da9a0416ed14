"""Freezing an instance's processes for real: cgroup v2's freezer, and SIGSTOP when there is no
cgroup; a grandchild freezes with its parent, and both go on after the thaw."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from supervisor.cgroup import CgroupTree, InstanceCgroup, detect
from supervisor.freezer import Freezer
from supervisor.process import reap_group, spawn

from .conftest import wait_until

# A parent that starts a worker, and both count in files, every 10 ms.
_COUNTING = """
import os, subprocess, sys, time
here = sys.argv[1]
worker = subprocess.Popen([sys.executable, "-c", '''
import sys, time
n = 0
while True:
    n += 1
    open(sys.argv[1], "w").write(str(n))
    time.sleep(0.01)
''', os.path.join(here, "worker")])
open(os.path.join(here, "worker.pid"), "w").write(str(worker.pid))
n = 0
while True:
    n += 1
    open(os.path.join(here, "parent"), "w").write(str(n))
    time.sleep(0.01)
"""


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
async def cgroup() -> AsyncIterator[InstanceCgroup]:
    verdict = detect()
    if verdict.directory is None:
        pytest.skip(f"no delegated cgroup v2 to create instance cgroups in: {verdict.reason}")
    tree = CgroupTree.create(verdict.directory, secrets.token_hex(4))
    try:
        yield tree.instance("fn.1#1")
    finally:
        tree.remove()


async def _counting(
    tmp_path: Path, cgroup: InstanceCgroup | None
) -> tuple[asyncio.subprocess.Process, int]:
    proc = await spawn(
        [sys.executable, "-c", _COUNTING, str(tmp_path)],
        cwd=tmp_path,
        env=dict(os.environ),
        cgroup_procs=cgroup.procs_file if cgroup is not None else None,
    )
    await wait_until(lambda: _count(tmp_path / "worker") > 0, what="the worker counting")
    return proc, int((tmp_path / "worker.pid").read_text())


async def _reap(child: asyncio.subprocess.Process) -> None:
    proc = psutil.Process(child.pid)
    reap_group(child.pid, [proc, *proc.children(recursive=True)])
    await child.wait()
    child._transport.close()  # type: ignore[attr-defined]


async def _check_freeze_and_thaw(
    tmp_path: Path, cgroup: InstanceCgroup | None, mechanism: str
) -> None:
    child, worker = await _counting(tmp_path, cgroup)
    pid = child.pid
    freezer = Freezer(pid, cgroup)
    try:
        assert freezer.freeze() == mechanism
        assert freezer.frozen
        if cgroup is not None:
            # The kernel says when every task of the cgroup is frozen.
            await wait_until(
                lambda: "frozen 1" in (cgroup.path / "cgroup.events").read_text(),
                what="cgroup.events: frozen 1",
            )
        else:
            await wait_until(
                lambda: _state(pid) == "T" and _state(worker) == "T", what="both stopped (T)"
            )
        parent_at, worker_at = _count(tmp_path / "parent"), _count(tmp_path / "worker")
        freezer.thaw()
        assert not freezer.frozen
        await wait_until(
            lambda: (
                _count(tmp_path / "parent") > parent_at and _count(tmp_path / "worker") > worker_at
            ),
            what="both counting again",
        )
        if cgroup is not None:
            assert "frozen 0" in (cgroup.path / "cgroup.events").read_text()
        assert _state(pid) != "T" and _state(worker) != "T"
        freezer.thaw()  # twice is harmless
    finally:
        freezer.thaw()
        await _reap(child)


async def test_cgroup_freezer_freezes_the_whole_instance(
    tmp_path: Path, cgroup: InstanceCgroup
) -> None:
    await _check_freeze_and_thaw(tmp_path, cgroup, "cgroup")


async def test_without_a_cgroup_sigstop_freezes_the_tree(tmp_path: Path) -> None:
    await _check_freeze_and_thaw(tmp_path, None, "SIGSTOP")


async def test_a_frozen_instance_can_still_be_killed(
    tmp_path: Path, cgroup: InstanceCgroup
) -> None:
    # A second Ctrl-C (or the OOM killer) must not wait for a thaw: SIGKILL reaches frozen
    # tasks.
    child, worker = await _counting(tmp_path, cgroup)
    Freezer(child.pid, cgroup).freeze()
    await wait_until(
        lambda: "frozen 1" in (cgroup.path / "cgroup.events").read_text(), what="frozen"
    )
    cgroup.kill()
    await wait_until(lambda: not cgroup.populated(), what="the cgroup empty")
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
    assert await child.wait() == -9
    child._transport.close()  # type: ignore[attr-defined]
