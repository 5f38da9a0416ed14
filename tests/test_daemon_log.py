"""What the daemon log says about exits: a job done is news, not a warning; a crash is."""

from __future__ import annotations

import logging
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
