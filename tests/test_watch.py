"""Watch mode: which file changes do what, and a requirements change moving instances to a new venv."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import psutil
from watchfiles import Change

import config
from supervisor.reload import Reloader
from supervisor.watch import _Filter, classify, watch_project

from .conftest import APPS, PY, all_ready, rows_of, running_daemon, wait_until, write_config


def _plan(tmp_path: Path, extra: str = "") -> config.Plan:
    (tmp_path / "api").mkdir(exist_ok=True)
    (tmp_path / "api" / "requirements.txt").write_text("six\n")
    (tmp_path / "worker").mkdir(exist_ok=True)
    path = write_config(
        tmp_path,
        f"""
[services.api]
command = ["python", "app.py"]
cwd = "api"
watch_ignore = ["tests/*"]
{extra}

[services.worker]
command = ["{PY}", "w.py"]
cwd = "worker"
venv = false
watch = ["*.py", "*.cfg"]
""",
    )
    return config.load(path)


def _venvs_on_disk(new: str, old: str) -> tuple[bool, bool]:
    return os.path.exists(os.path.join(new, ".corral-complete")), os.path.isdir(old)


def test_classify_maps_changes_to_actions(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    api, worker = tmp_path / "api", tmp_path / "worker"

    everything = classify(plan, [api / "app.py", api / "pkg" / "m.py"], everything=True)
    assert everything.restart == {"api"} and not everything.rebuild and not everything.reload

    # Without --watch only services with their own patterns react, and corral.toml does not.
    assert classify(plan, [api / "app.py"], everything=False).restart == set()
    assert classify(plan, [worker / "settings.cfg"], everything=False).restart == {"worker"}
    assert not classify(plan, [plan.path], everything=False).reload
    assert classify(plan, [plan.path], everything=True).reload

    rebuild = classify(plan, [api / "requirements.txt", api / "app.py"], everything=True)
    assert rebuild.rebuild == {"api"} and rebuild.restart == set()  # the rebuild rolls anyway

    assert classify(plan, [api / "tests" / "test_x.py"], everything=True).restart == set()
    assert classify(plan, [api / "README.md"], everything=True).restart == set()


def test_state_dir_changes_are_ignored(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    keep = _Filter(plan.daemon.state_dir)
    assert not keep(Change.modified, str(plan.daemon.state_dir / "logs" / "api.1.log"))
    assert keep(Change.modified, str(tmp_path / "api" / "app.py"))
    assert keep(Change.modified, str(tmp_path / ".corral-notes" / "app.py"))  # only the dir


def test_other_configs_state_is_ignored_too(tmp_path: Path) -> None:
    _plan(tmp_path)
    other = tmp_path / "other.toml"
    other.write_text((tmp_path / "corral.toml").read_text())
    plan = config.load(other)
    keep = _Filter(plan.daemon.state_dir, plan.path.parent)
    assert not keep(Change.modified, str(plan.daemon.state_dir / "logs" / "api.1.log"))
    # corral.toml's daemon, in the same directory, writes here all the time:
    root = plan.path.parent
    assert not keep(Change.added, str(root / ".corral" / "venvs" / "api-1" / "x.py"))
    assert keep(Change.modified, str(root / "api" / "app.py"))


async def test_requirements_change_rebuilds_then_rolls_onto_the_new_venv(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(APPS / "web.py", app / "web.py")
    (app / "requirements.txt").write_text("six\n")
    path = write_config(
        tmp_path,
        f"""
[services.web]
command = ["python", "web.py"]
cwd = "{app}"
port = "auto"
watch = ["requirements.txt"]
health = {{ http = "/healthz", interval = "200ms", timeout = "150ms", retries = 2 }}
""",
    )

    def venv_of(pid: object) -> str:
        return psutil.Process(int(pid)).environ()["VIRTUAL_ENV"]  # type: ignore[call-overload]

    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1), timeout=60, what="first venv")
        old_pid = rows_of(daemon, "web")[0]["pid"]
        old_venv = venv_of(old_pid)
        watcher = asyncio.create_task(watch_project(daemon, Reloader(daemon), everything=False))
        try:
            deadline = time.monotonic() + 30
            edits, last_edit, building = 0, 0.0, False
            while rows_of(daemon, "web")[0]["pid"] == old_pid:
                assert time.monotonic() < deadline, "the requirements change never rolled"
                building = building or daemon.services["web"].phase == "building"
                # watchfiles may still be setting up its watches: edit again only if nothing
                # started. A second rebuild would rightly prune the first venv (two are kept).
                if not building and edits < 3 and time.monotonic() - last_edit > 2:
                    edits += 1
                    last_edit = time.monotonic()
                    (app / "requirements.txt").write_text(f"six\n# edit {edits}\n")
                await asyncio.sleep(0.02)
            await wait_until(lambda: all_ready(daemon, "web", 1), timeout=60)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        new_venv = venv_of(rows_of(daemon, "web")[0]["pid"])
        assert new_venv != old_venv
        # The new one is complete; the old one is kept: it may still have been serving.
        assert _venvs_on_disk(new_venv, old_venv) == (True, True)
