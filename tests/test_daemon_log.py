"""What the daemon log says about exits: a job done is news, not a warning; a crash is."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import PY, running_daemon, state_of, wait_until, write_config


async def test_a_successful_oneshot_is_not_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(
        tmp_path,
        f"""
[services.migrate]
command = ["{PY}", "-c", "print('migrated')"]
oneshot = true
venv = false

[services.broken]
command = ["{PY}", "-c", "raise SystemExit(3)"]
oneshot = true
venv = false
""",
    )
    caplog.set_level(logging.INFO, logger="supervisor")
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "migrate.1") == "completed")
        await wait_until(lambda: state_of(daemon, "broken.1") == "failed")
    about = {
        name: [r for r in caplog.records if r.getMessage().startswith(f"{name}.1 (pid=")]
        for name in ("migrate", "broken")
    }
    assert [r.levelname for r in about["migrate"]] == ["INFO"]
    assert "exited: exit 0" in about["migrate"][0].getMessage()
    assert [r.levelname for r in about["broken"]] == ["WARNING"]


def _run_daemon(tmp_path: Path, args: list[str], journal: bool) -> list[str]:
    """`corral daemon ARGS` with stderr to a file (the journal's stream when `journal`: its
    dev:inode in JOURNAL_STREAM, as systemd sets it); its log lines once it has stopped."""
    write_config(
        tmp_path,
        f'[services.web]\ncommand = ["{PY}", "-c", "print(\'hello\', flush=True); '
        'import time; time.sleep(600)"]\nvenv = false\nmin_uptime = "100ms"\n',
    )
    err = tmp_path / "stderr.log"
    with open(err, "wb") as out:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            st = os.fstat(out.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "daemon", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "start-up converged" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err.read_text().splitlines()


_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} corral: "


def test_daemon_log_lines_have_timestamps_off_the_journal(tmp_path: Path) -> None:
    lines = _run_daemon(tmp_path, [], journal=False)
    assert lines
    assert all(re.match(_STAMP + r"(DEBUG|INFO|WARNING|ERROR) \S+: ", line) for line in lines), (
        lines
    )
    # Instance output has its own files; off the journal it is not copied into this log.
    assert not any("hello" in line for line in lines)


def test_journal_lines_carry_priorities_and_no_timestamps(tmp_path: Path) -> None:
    lines = _run_daemon(tmp_path, [], journal=True)
    assert all(re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR) \S+: ", line) for line in lines), lines
    assert "<6>INFO supervisor.systemd: start-up converged: web 1/1 running" in lines
    # SIGTERM's note is a warning: journalctl -p warning shows it.
    assert any(line.startswith("<4>WARNING supervisor.foreground: stopping") for line in lines)
    # Under the journal the instances' output is copied too (`journalctl -u` shows it).
    assert "<6>INFO supervisor.child.web.1: stdout hello" in lines


def test_only_the_stream_systemd_named_is_the_journal(tmp_path: Path) -> None:
    from supervisor.logformat import is_journal

    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        named = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert is_journal(a, named)
        # A child whose unit redirected its stderr inherits JOURNAL_STREAM all the same.
        assert not is_journal(b, named)
        assert not is_journal(a, {})
        assert not is_journal(a, {"JOURNAL_STREAM": "garbage"})


def test_json_log_format(tmp_path: Path) -> None:
    lines = _run_daemon(tmp_path, ["--log-format", "json"], journal=False)
    records = [json.loads(line) for line in lines]
    assert {"ts", "level", "logger", "message", "pid"} <= set(records[0])
    converged = [r for r in records if r["message"].startswith("start-up converged")]
    assert converged[0]["level"] == "info"
    assert converged[0]["logger"] == "supervisor.systemd"
    assert re.fullmatch(_STAMP.removesuffix(" corral: "), converged[0]["ts"])


def test_json_under_the_journal_keeps_the_priority_and_child_fields(tmp_path: Path) -> None:
    lines = _run_daemon(tmp_path, ["--log-format", "json"], journal=True)
    assert all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    records = [json.loads(line[3:]) for line in lines]
    hello = [r for r in records if r["logger"] == "supervisor.child.web.1"]
    assert hello and hello[0]["message"] == "stdout hello"
    assert (hello[0]["service"], hello[0]["instance"], hello[0]["stream"]) == ("web", 1, "stdout")
