"""Fixed ports survive rolls: a service with `port = N` keeps N, N+1 … after a restart or a
reload, unless it is behind Corral's proxy (then replacements surge onto fresh ports)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor.errors import SupervisorError
from supervisor.reload import Reloader

from .conftest import (
    all_ready,
    consecutive_free_ports,
    get_json,
    rows_of,
    running_daemon,
    wait_until,
    web_service,
    write_config,
)


async def _roll_watching(daemon: object, roll: asyncio.Task[object], service: str) -> int:
    """The fewest ready current instances seen while `roll` runs."""
    lowest = 99
    while not roll.done():
        ready = [r for r in rows_of(daemon, service) if r["state"] == "ready"]  # type: ignore[arg-type]
        lowest = min(lowest, len(ready))
        await asyncio.sleep(0.005)
    await roll
    return lowest


async def test_restart_and_reload_keep_fixed_ports(tmp_path: Path) -> None:
    base = consecutive_free_ports(3)
    path = write_config(tmp_path, web_service("web", instances=3, port=str(base)))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 3))
        ports = [base, base + 1, base + 2]
        before = [r["pid"] for r in rows_of(daemon, "web")]
        lowest = await _roll_watching(daemon, asyncio.create_task(daemon.restart(["web"])), "web")
        rows = rows_of(daemon, "web")
        assert [r["port"] for r in rows] == ports
        assert not set(before) & {r["pid"] for r in rows}
        assert lowest == 2, "in place: one instance down at a time, never more"
        for row in rows:  # and they really serve there
            assert (await get_json(int(row["port"])))["pid"] == row["pid"]  # type: ignore[call-overload]

        path.write_text(web_service("web", instances=3, port=str(base), extra='env = { V = "2" }'))
        result = await Reloader(daemon).reload()
        assert result["changes"] == ["~ web: changed, rolling restart"]
        await wait_until(lambda: all_ready(daemon, "web", 3))
        assert [r["port"] for r in rows_of(daemon, "web")] == ports


async def test_surge_moves_to_fresh_ports_when_told_or_behind_the_proxy(tmp_path: Path) -> None:
    base = consecutive_free_ports(2)
    proxy = '\n[proxy]\nlisten = "127.0.0.1:0"\n'
    text = web_service("told", port=str(base), extra='roll = "surge"') + proxy
    text += web_service("routed", port=str(base + 1), extra='route = { path = "/" }')
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "told", 1) and all_ready(daemon, "routed", 1))
        lowest = await _roll_watching(
            daemon, asyncio.create_task(daemon.restart(["told", "routed"])), "routed"
        )
        assert lowest == 1, "surge: the old one serves until its replacement is ready"
        assert rows_of(daemon, "told")[0]["port"] != base
        assert rows_of(daemon, "routed")[0]["port"] != base + 1


async def test_in_place_roll_that_fails_stops_and_says_so(tmp_path: Path) -> None:
    base = consecutive_free_ports(2)
    path = write_config(
        tmp_path, web_service("web", instances=2, port=str(base), extra="crash_limit = 2")
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        second = rows_of(daemon, "web")[1]["pid"]
        path.write_text(
            web_service(
                "web",
                instances=2,
                port=str(base),
                extra='crash_limit = 2\ncrash_loop = "stop"\nenv = { CRASH_INSTANCE = "1" }',
            )
        )
        with pytest.raises(
            SupervisorError, match=r"1 instance\(s\) not rolled yet still run the old"
        ):
            await Reloader(daemon).reload()
        rows = rows_of(daemon, "web")
        assert rows[0]["state"] == "failed" and rows[0]["port"] == base
        assert rows[1]["pid"] == second and rows[1]["state"] == "ready"
