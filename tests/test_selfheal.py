"""Self-healing does not give up for good: failed is retried after a cool-down, and says when."""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import (
    APPS,
    PY,
    rows_of,
    running_daemon,
    state_of,
    wait_until,
    web_service,
    write_config,
)

FAST_COOLDOWN = 'crash_limit = 2\ncrash_cooldown = { initial = "1s", max = "4s" }'


async def test_failed_is_retried_after_its_cool_down_and_says_when(tmp_path: Path) -> None:
    extra = f'env = {{ CRASH_INSTANCE = "1" }}\n{FAST_COOLDOWN}'
    path = write_config(tmp_path, web_service("web", extra=extra))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "web.1") == "failed")
        row = rows_of(daemon, "web")[0]
        assert isinstance(row["retry_at"], float) and row["retry_at"] > time.time() - 0.5
        assert str(row["detail"]).startswith("retry in ")
        assert "crashed 2 times in 60s (crash_limit 2)" in str(row["detail"])
        failed = [e for e in daemon.events.recent() if e.kind == "state" and e.new == "failed"]
        assert failed[-1].retry_at == row["retry_at"]
        assert "; retry in " in failed[-1].detail
        starts = sum(1 for e in daemon.events.recent() if e.new == "starting")
        # Not given up on: after the cool-down it is started again (and fails again, 2 s).
        await wait_until(
            lambda: sum(1 for e in daemon.events.recent() if e.new == "starting") > starts,
            what="a retry after the cool-down",
        )
        await wait_until(lambda: state_of(daemon, "web.1") == "failed")
        again = [e for e in daemon.events.recent() if e.kind == "state" and e.new == "failed"]
        assert again[-1].retry_at is not None and failed[-1].retry_at is not None
        assert again[-1].retry_at - again[-1].ts > failed[-1].retry_at - failed[-1].ts + 0.5


async def test_crash_loop_stop_is_for_good(tmp_path: Path) -> None:
    extra = f'env = {{ CRASH_INSTANCE = "1" }}\n{FAST_COOLDOWN}\ncrash_loop = "stop"'
    path = write_config(tmp_path, web_service("web", extra=extra))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "web.1") == "failed")
        row = rows_of(daemon, "web")[0]
        assert row["retry_at"] is None
        assert str(row["detail"]) == "exit 3; crashed 2 times in 60s (crash_limit 2)"
        assert not daemon.services["web"].instances[1].alive


async def test_dependents_come_back_when_their_dependency_recovers(tmp_path: Path) -> None:
    (tmp_path / "crash").write_text("")
    db = (
        "import os, runpy, sys\n"
        "if os.path.exists('crash'): sys.exit(3)\n"
        f"runpy.run_path({str(APPS / 'web.py')!r}, run_name='__main__')\n"
    )
    (tmp_path / "db.py").write_text(db)
    path = write_config(
        tmp_path,
        f"""
[services.db]
command = ["{PY}", "db.py"]
cwd = "{tmp_path}"
port = "auto"
venv = false
{FAST_COOLDOWN}

[services.api]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
min_uptime = "0s"
depends_on = {{ db = "healthy" }}
""",
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "api.1") == "failed")
        assert "dependency 'db' failed" in str(rows_of(daemon, "api")[0]["detail"])
        (tmp_path / "crash").unlink()
        # db is retried after its cool-down, gets ready; api stops being failed by itself.
        await wait_until(lambda: state_of(daemon, "db.1") == "ready", timeout=20)
        await wait_until(lambda: state_of(daemon, "api.1") == "running", timeout=20)
