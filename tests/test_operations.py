"""Runtime operations without the proxy: reload, rolling restart, scale persistence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor.errors import SupervisorError
from supervisor.reload import Reloader, diff
from supervisor.service import RollFailed

from .conftest import (
    all_ready,
    rows_of,
    running_daemon,
    sleeper_service,
    state_of,
    wait_until,
    web_service,
    write_config,
)

_sleeper = sleeper_service


async def test_invalid_reload_changes_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=2))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        before = [r["pid"] for r in rows_of(daemon, "web")]
        path.write_text(path.read_text().replace("instances = 2", 'instances = "many"'))
        with pytest.raises(SupervisorError, match=r"services\.web\.instances: expected an integer"):
            await Reloader(daemon).reload()
        assert [r["pid"] for r in rows_of(daemon, "web")] == before
        assert all_ready(daemon, "web", 2)
        assert daemon.events.recent(1)[0].new == "rejected"


async def test_reload_applies_only_the_difference(tmp_path: Path) -> None:
    text = web_service("keep") + web_service("change") + _sleeper("gone") + _sleeper("grow")
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "keep", 1) and all_ready(daemon, "change", 1))
        await wait_until(
            lambda: state_of(daemon, "gone.1") == state_of(daemon, "grow.1") == "running"
        )
        pids = {r["name"]: r["pid"] for r in daemon.ps()}
        new_text = (
            web_service("keep")
            + web_service("change", extra='env = { FLAVOUR = "new" }')
            + _sleeper("grow", extra="instances = 2")
            + _sleeper("added")
        )
        path.write_text(new_text)
        result = await Reloader(daemon).reload()
        assert sorted(result["changes"]) == sorted(
            [
                "+ added: new service, starting",
                "- gone: removed, draining and stopping",
                "~ change: changed, rolling restart",
                "~ grow: scaling to 2",
            ]
        )
        await wait_until(lambda: state_of(daemon, "added.1") == "running")
        await wait_until(lambda: state_of(daemon, "grow.2") == "running")
        now = {r["name"]: r["pid"] for r in daemon.ps()}
        assert now["keep.1"] == pids["keep.1"]  # untouched
        assert now["grow.1"] == pids["grow.1"]  # scaled, not restarted
        assert now["change.1"] != pids["change.1"]  # rolled onto the new settings
        assert "gone.1" not in now
        assert list(daemon.services) == ["keep", "change", "grow", "added"]


async def test_rolling_restart_keeps_every_slot_ready(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=3))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 3))
        before = {r["name"]: (r["pid"], r["port"]) for r in rows_of(daemon, "web")}
        lowest = 3
        roll = asyncio.create_task(daemon.restart(["web"]))
        saw_new = False
        while not roll.done():
            ready = [r for r in daemon.ps() if r["service"] == "web" and r["state"] == "ready"]
            current = [r for r in ready if not r.get("retiring") and not r.get("incoming")]
            lowest = min(lowest, len(current))
            saw_new = saw_new or any(r.get("incoming") for r in daemon.ps())
            await asyncio.sleep(0.005)
        await roll
        assert lowest == 3, "a slot had no ready instance during the roll"
        assert saw_new, "ps never showed the replacement starting"
        after = {r["name"]: (r["pid"], r["port"]) for r in rows_of(daemon, "web")}
        assert sorted(after) == sorted(before)
        for name in before:
            assert after[name][0] != before[name][0]
            assert after[name][1] != before[name][1]  # replacement started on a fresh port
        assert all_ready(daemon, "web", 3)


async def test_roll_aborts_when_a_replacement_never_gets_ready(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=2, extra="crash_limit = 2"))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        before = [r["pid"] for r in rows_of(daemon, "web")]
        # The new version crashes at start-up (instance 1 first, as a roll goes in order).
        path.write_text(
            path.read_text().replace(
                "crash_limit = 2", 'crash_limit = 2\nenv = { CRASH_INSTANCE = "1" }'
            )
        )
        with pytest.raises(SupervisorError, match="replacement never became ready"):
            await Reloader(daemon).reload()
        assert [r["pid"] for r in rows_of(daemon, "web")] == before
        assert all_ready(daemon, "web", 2)
        assert not any(r.get("incoming") or r.get("retiring") for r in daemon.ps())


async def test_restart_raises_roll_failed_directly(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", extra=f'cwd = "{tmp_path}"'))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        service = daemon.services["web"]
        # Shrink the readiness budget so the unhealthy replacement is given up on quickly.
        (tmp_path / "unhealthy.1").write_text("")
        old_pid = rows_of(daemon, "web")[0]["pid"]
        # The old instance turns unhealthy too (same file); it still is the one kept.
        with pytest.raises(RollFailed):
            await service.restart(rolling=True)
        assert rows_of(daemon, "web")[0]["pid"] == old_pid


async def test_scaled_count_survives_a_daemon_restart(tmp_path: Path) -> None:
    path = write_config(tmp_path, _sleeper("work"))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: state_of(daemon, "work.1") == "running")
        await daemon.scale({"work": 3})
        await wait_until(lambda: len(rows_of(daemon, "work")) == 3)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: [r["state"] for r in rows_of(daemon, "work")] == ["running"] * 3)
    # Once the config itself changes the count, the config wins.
    path.write_text(_sleeper("work", extra="instances = 2"))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: [r["state"] for r in rows_of(daemon, "work")] == ["running"] * 2)


def test_diff_is_pure_and_ignores_routing_only_changes(tmp_path: Path) -> None:
    import config

    path = write_config(tmp_path, web_service("web") + '\n[proxy]\nlisten = "127.0.0.1:0"\n')
    old = config.load(path)
    path.write_text(
        path.read_text().replace("venv = false", 'venv = false\nbalance = "least_conn"')
    )
    new = config.load(path)
    changes = diff(old, new)
    assert changes.updated == ("web",) and not changes.rolled and not changes.scaled
