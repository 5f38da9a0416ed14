"""The supervisor with real processes: ports, restarts, crash loops, trees, dependencies."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psutil
import pytest

from .conftest import (
    PY,
    all_ready,
    consecutive_free_ports,
    get_json,
    pid_alive,
    rows_of,
    running_daemon,
    state_of,
    wait_until,
    web_command,
    web_service,
    write_config,
)


async def test_instances_get_distinct_ports_and_all_answer(tmp_path: Path) -> None:
    base = consecutive_free_ports(3)
    path = write_config(tmp_path, web_service("web", instances=3, port=str(base)))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 3), what="3 ready instances")
        rows = rows_of(daemon, "web")
        assert [r["port"] for r in rows] == [base, base + 1, base + 2]
        for i, row in enumerate(rows, start=1):
            data = await get_json(int(row["port"]))  # type: ignore[call-overload]
            assert data["instance"] == f"web.{i}"
            assert data["pid"] == row["pid"]


async def test_kill_9_instance_is_replaced_on_the_same_port(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=2))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        victim = rows_of(daemon, "web")[0]
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        await wait_until(
            lambda: (
                rows_of(daemon, "web")[0]["pid"] not in (None, victim["pid"])
                and rows_of(daemon, "web")[0]["state"] == "ready"
            ),
            what="web.1 replaced and ready",
        )
        row = rows_of(daemon, "web")[0]
        assert row["port"] == victim["port"]
        assert row["restarts"] == 1
        data = await get_json(int(row["port"]))  # type: ignore[call-overload]
        assert data["pid"] == row["pid"]


async def test_crash_loop_marks_failed_while_siblings_serve(tmp_path: Path) -> None:
    extra = 'env = { CRASH_INSTANCE = "2" }\ncrash_limit = 3\ncrash_window = "60s"'
    path = write_config(tmp_path, web_service("web", instances=3, extra=extra))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "web.2") == "failed", what="web.2 failed")
        row = next(r for r in rows_of(daemon, "web") if r["name"] == "web.2")
        assert "crashed 3 times" in str(row["detail"])
        assert row["restarts"] == 2
        await wait_until(lambda: state_of(daemon, "web.1") == state_of(daemon, "web.3") == "ready")
        for name in ("web.1", "web.3"):
            port = next(r["port"] for r in rows_of(daemon, "web") if r["name"] == name)
            assert (await get_json(int(port)))["instance"] == name  # type: ignore[call-overload]
        # Retried after its cool-down (10 s by default); `start` brings it back at once (and it
        # crashes again, honestly).
        await daemon.start(["web.2"])
        await wait_until(lambda: state_of(daemon, "web.2") in ("starting", "crashed", "backoff"))


async def test_stop_kills_grandchildren_that_ignore_sigterm(tmp_path: Path) -> None:
    extra = 'env = { SPAWN_CHILD = "1", IGNORE_TERM = "1" }\nstop_timeout = "300ms"'
    path = write_config(tmp_path, web_service("web", extra=extra))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        pid = int(rows_of(daemon, "web")[0]["pid"])  # type: ignore[call-overload]
        tree = psutil.Process(pid).children(recursive=True)
        assert tree, "the test app should have forked a grandchild"
        await daemon.stop(["web"])
        assert state_of(daemon, "web.1") == "stopped"
        for gone in [pid, *(p.pid for p in tree)]:
            assert not pid_alive(gone), f"{gone} survived stop"


async def test_port_held_by_a_foreign_process(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    try:
        text = web_service("fixed", port=str(taken)) + web_service("auto", port='"auto"')
        path = write_config(tmp_path, text)
        async with running_daemon(path) as daemon:
            await wait_until(lambda: state_of(daemon, "fixed.1") == "failed")
            row = rows_of(daemon, "fixed")[0]
            assert str(taken) in str(row["detail"])
            await wait_until(lambda: all_ready(daemon, "auto", 1))
            assert rows_of(daemon, "auto")[0]["port"] != taken
    finally:
        squatter.close()


async def test_depends_on_order(tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    text = f"""
[services.migrate]
command = ["{PY}", "-c", "import pathlib, time; time.sleep(0.3); pathlib.Path('{marker}').write_text('x')"]
oneshot = true
venv = false

[services.api]
command = ["{PY}", "-c", "import pathlib, sys, time; pathlib.Path('{marker}').exists() or sys.exit(7); time.sleep(60)"]
venv = false
restart = "no"
depends_on = {{ migrate = "completed" }}
"""
    # api exits 7 if it starts before migrate finished; with the right order it runs.
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "migrate.1") == "completed")
        await wait_until(lambda: state_of(daemon, "api.1") == "running")
        events = [(e.instance, e.new) for e in daemon.events.recent() if e.kind == "state"]
        assert events.index(("migrate.1", "completed")) < events.index(("api.1", "starting"))


async def test_failed_dependency_fails_dependents_only(tmp_path: Path) -> None:
    text = f"""
[services.migrate]
command = ["{PY}", "-c", "raise SystemExit(4)"]
oneshot = true
venv = false

[services.api]
command = ["{PY}", "-c", "import time; time.sleep(60)"]
venv = false
depends_on = {{ migrate = "completed" }}

[services.other]
command = ["{PY}", "-c", "import time; time.sleep(60)"]
venv = false
"""
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "api.1") == "failed")
        assert "dependency 'migrate' failed" in str(rows_of(daemon, "api")[0]["detail"])
        assert state_of(daemon, "migrate.1") == "failed"
        await wait_until(lambda: state_of(daemon, "other.1") == "running")


async def test_failed_venv_build_fails_that_service_alone(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "requirements.txt").write_text("corral-no-such-package-xyz==1.0\n")
    text = f"""
[services.bad]
command = ["python", "-c", "import time; time.sleep(60)"]
cwd = "bad"

[services.good]
{web_command()}
port = "auto"
venv = false
"""
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "bad.1") == "failed", timeout=60)
        assert "virtualenv build failed" in str(rows_of(daemon, "bad")[0]["detail"])
        await wait_until(lambda: all_ready(daemon, "good", 1))
        tail = daemon.logs.tail([("bad", None)], 200)
        assert any("corral-no-such-package-xyz" in r.line for r in tail)


async def test_instance_environment(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    code = (
        "import os, json; json.dump({k: os.environ.get(k) for k in "
        "['PORT', 'CORRAL_SERVICE', 'CORRAL_INSTANCE', 'GREETING', 'SECRET_FROM_DAEMON']}, "
        f"open('{out}', 'w'))"
    )
    text = f"""
[services.envy]
command = ["{PY}", "-c", "{code}"]
port = "auto"
venv = false
oneshot = true
env = {{ GREETING = "hi" }}
"""
    os.environ["SECRET_FROM_DAEMON"] = "leak"
    try:
        path = write_config(tmp_path, text)
        async with running_daemon(path) as daemon:
            await wait_until(lambda: state_of(daemon, "envy.1") == "completed")
            port = rows_of(daemon, "envy")[0]["port"]
    finally:
        del os.environ["SECRET_FROM_DAEMON"]
    import json

    env = json.loads(out.read_text())
    assert env == {
        "PORT": str(port),
        "CORRAL_SERVICE": "envy",
        "CORRAL_INSTANCE": "1",
        "GREETING": "hi",
        "SECRET_FROM_DAEMON": None,  # a clean environment: only the allow-list passes
    }


async def test_scale_up_and_down(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=1))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        await daemon.scale({"web": 3})
        await wait_until(lambda: all_ready(daemon, "web", 3))
        pids = [r["pid"] for r in rows_of(daemon, "web")]
        await daemon.scale({"web": 1})
        assert [r["name"] for r in rows_of(daemon, "web")] == ["web.1"]
        for pid in pids[1:]:
            assert not pid_alive(int(pid))  # type: ignore[call-overload]


async def test_liveness_failure_restarts_the_instance(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", extra=f'cwd = "{tmp_path}"'))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        first_pid = rows_of(daemon, "web")[0]["pid"]
        (tmp_path / "unhealthy").write_text("")
        await wait_until(lambda: state_of(daemon, "web.1") == "unhealthy", what="unhealthy")
        (tmp_path / "unhealthy").unlink()
        await wait_until(
            lambda: state_of(daemon, "web.1") == "ready", what="ready again after a probe passes"
        )
        # Readiness recovered without a restart.
        assert rows_of(daemon, "web")[0]["pid"] == first_pid
        (tmp_path / "unhealthy").write_text("")
        await wait_until(
            lambda: rows_of(daemon, "web")[0]["restarts"] == 1, what="liveness restart"
        )
        (tmp_path / "unhealthy").unlink()
        await wait_until(lambda: all_ready(daemon, "web", 1))
        assert rows_of(daemon, "web")[0]["pid"] != first_pid


async def test_logs_tail_and_follow(tmp_path: Path) -> None:
    code = "import time\\nfor i in range(5): print('line', i, flush=True)\\ntime.sleep(60)"
    text = f"""
[services.talker]
command = ["{PY}", "-c", "{code}"]
venv = false
"""
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(
            lambda: any(r.line == "line 4" for r in daemon.logs.tail([("talker", 1)], 50))
        )
        lines = [r.line for r in daemon.logs.tail([("talker", 1)], 50) if r.stream == "stdout"]
        assert lines == [f"line {i}" for i in range(5)]
        assert (daemon.plan.daemon.state_dir / "logs" / "talker.1.log").read_text().count(
            "line"
        ) >= 5


@pytest.mark.parametrize("restart", ["on-failure", "no"])
async def test_clean_exit_is_not_restarted(tmp_path: Path, restart: str) -> None:
    text = f"""
[services.once]
command = ["{PY}", "-c", "pass"]
venv = false
restart = "{restart}"
"""
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "once.1") == "stopped")
        assert rows_of(daemon, "once")[0]["restarts"] == 0


def test_instances_inherit_only_stdio_from_a_daemon_run_on_uvloop(tmp_path: Path) -> None:
    # `corral daemon` runs on uvloop, whose subprocesses keep every inheritable descriptor of
    # the parent: here a pipe the daemon was started with, as a shell's would be.
    out = tmp_path / "fds.json"
    code = (
        "import json, os; fds = []\\n"
        "for name in os.listdir('/proc/self/fd'):\\n"
        "    try: fds.append([int(name), os.readlink('/proc/self/fd/' + name)])\\n"
        "    except OSError: pass\\n"
        f"json.dump(sorted(fds), open('{out}.tmp', 'w')); os.rename('{out}.tmp', '{out}')"
    )
    path = write_config(
        tmp_path,
        f"""
[services.fds]
command = ["{PY}", "-c", "{code}"]
venv = false
oneshot = true
""",
    )
    import json
    import subprocess
    import sys

    from .test_cli import wait_for

    keep_r, keep_w = os.pipe()
    os.set_inheritable(keep_r, True)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon", "-f", str(path)],
        pass_fds=(keep_r,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(out.exists, timeout=30, what="the instance to list its descriptors")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        os.close(keep_r)
        os.close(keep_w)
    fds = json.loads(out.read_text())
    assert [fd for fd, _ in fds] == [0, 1, 2], fds
