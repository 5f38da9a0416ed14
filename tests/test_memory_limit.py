"""memory_limit: an instance whose process tree's RSS stays above it for memory_grace is
restarted (drained first), and the reason is recorded: in events, `ps` DETAIL, and the
restart counts by reason."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from supervisor.cgroup import detect
from supervisor.daemon import Daemon
from supervisor.memory import MemoryWatch, pace
from supervisor.output import ps_table

from .conftest import PY, pid_alive, rows_of, running_daemon, wait_until, write_config

MB = 1 << 20

# The instance's own process stays small; the memory is its child's, so only the tree's RSS
# is over the limit (a gunicorn master and its workers).
HOG = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', "
    "'import time; x = bytearray(96 * 1024 * 1024); time.sleep(600)']); "
    "time.sleep(600)"
)


def test_the_watch_waits_for_the_grace_period() -> None:
    watch = MemoryWatch(limit=100 * MB, grace=30.0)
    assert watch.observe(150 * MB, now=0.0) is None  # over, but only just now
    assert watch.observe(150 * MB, now=29.0) is None
    assert watch.observe(150 * MB, now=31.0) == "memory_limit: RSS 150MB above 100MB for 31s"
    # A dip below the limit starts the grace period afresh.
    assert watch.observe(90 * MB, now=32.0) is None
    assert watch.observe(150 * MB, now=40.0) is None
    assert watch.observe(150 * MB, now=60.0) is None
    assert watch.observe(150 * MB, now=70.0) is not None
    assert MemoryWatch(limit=100 * MB, grace=0.0).observe(101 * MB, now=5.0) is not None


def test_a_short_grace_samples_faster() -> None:
    assert pace(30.0) == 10.0
    assert pace(0.0) == 0.5  # never more than twice a second


async def test_an_instance_over_its_memory_limit_is_restarted_with_the_reason(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        f"""
[services.hog]
command = ["{PY}", "-c", "{HOG}"]
venv = false
min_uptime = "100ms"
memory_limit = "48MB"
memory_grace = "1s"
stop_timeout = "2s"
backoff = {{ initial = "50ms", max = "100ms" }}

[services.calm]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "100ms"
memory_limit = "48MB"
memory_grace = "1s"
""",
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: rows_of(daemon, "hog")[0]["restarts"] >= 1, timeout=30)
        row = rows_of(daemon, "hog")[0]
        reason = str(row["last_restart"])
        assert reason.startswith("memory_limit: RSS "), reason
        assert "MB above 48MB for " in reason
        # The way down is in the events: stopping and crashed, both saying why.
        events = [e for e in daemon.events.recent() if e.instance == "hog.1"]
        stopping = [e for e in events if e.new == "stopping"]
        assert stopping and stopping[0].detail.startswith("memory_limit: RSS ")
        assert any(e.new == "crashed" and e.detail.startswith("memory_limit") for e in events)
        inst = daemon.services["hog"].instances[1]
        assert inst.restart_reasons.get("memory_limit", 0) >= 1
        # Once it runs again, `ps` DETAIL says why it restarted.
        await wait_until(lambda: rows_of(daemon, "hog")[0]["state"] == "running", timeout=30)
        table = ps_table([r for r in daemon.ps() if r["name"] == "hog.1"])
        assert "restarted: memory_limit: RSS " in table
        # The tree was measured: the instance's own process is far below the limit.
        await wait_until(lambda: _tree_over(daemon), timeout=30)
        calm = rows_of(daemon, "calm")[0]
        assert calm["restarts"] == 0 and calm["state"] == "running"


def _tree_over(daemon: Daemon) -> bool:
    """The hog's sample covers its two processes, over the limit; its own process is not."""
    pid = rows_of(daemon, "hog")[0]["pid"]
    if not isinstance(pid, int):
        return False
    sample = daemon.stats().of(pid)
    try:
        own = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return False
    return sample.processes == 2 and sample.rss_bytes > 90 * MB and own < 48 * MB


# fork, setsid, fork: the grandchild holding the memory has left the instance's process tree
# (reparented away, another session) but not its cgroup.
ESCAPED_HOG = """
import os, time
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        x = bytearray(160 * 1024 * 1024)
        for i in range(0, len(x), 4096):
            x[i] = 1  # touch every page: resident, not just reserved
        with open("escaped.pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
    os._exit(0)
os.waitpid(child, 0)
time.sleep(600)
"""


async def test_a_double_forked_grandchild_in_the_cgroup_counts_towards_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (os.geteuid() == 0 and detect({}).directory is not None):
        pytest.skip(f"needs a writable cgroup v2 of our own ({detect({}).reason})")
    monkeypatch.delenv("CORRAL_CGROUP", raising=False)
    script = tmp_path / "escaper.py"
    script.write_text(ESCAPED_HOG)
    path = write_config(
        tmp_path,
        f"""
[services.hog]
command = ["{PY}", "{script}"]
venv = false
min_uptime = "100ms"
memory_limit = "100MB"
memory_grace = "2s"
stop_timeout = "2s"
backoff = {{ initial = "50ms", max = "100ms" }}
""",
    )
    pid_file = tmp_path / "escaped.pid"
    async with running_daemon(path) as daemon:
        await wait_until(pid_file.exists, timeout=30, what="the grandchild")
        grandchild = int(pid_file.read_text())
        leader = rows_of(daemon, "hog")[0]["pid"]
        assert isinstance(leader, int)
        assert grandchild not in [p.pid for p in psutil.Process(leader).children(recursive=True)]

        # `ps` and /metrics see its memory (the leader alone is a few MB) ...
        def counted() -> bool:
            row = rows_of(daemon, "hog")[0]
            return row["pid"] == leader and int(row["rss_bytes"] or 0) > 150 * MB

        await wait_until(counted, timeout=30, what="the grandchild's RSS in ps")
        assert daemon.stats().of(leader).processes == 2
        # ... and memory_limit restarts the instance for it.
        await wait_until(lambda: rows_of(daemon, "hog")[0]["restarts"] >= 1, timeout=30)
        reason = str(rows_of(daemon, "hog")[0]["last_restart"])
        assert reason.startswith("memory_limit: RSS "), reason
        await wait_until(lambda: not pid_alive(grandchild), timeout=30, what="the sweep")
