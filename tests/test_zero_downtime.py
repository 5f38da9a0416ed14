"""Traffic through the proxy while the stack changes: no failed request, no unready backend."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from supervisor.daemon import Daemon
from supervisor.reload import Reloader
from supervisor.watch import watch_project

from .conftest import APPS, PY, all_ready, rows_of, running_daemon, wait_until, write_config


@dataclass
class Load:
    """Concurrent GETs through the proxy; every outcome recorded with its time."""

    ok: list[tuple[float, int]] = field(default_factory=list)  # (received at, backend pid)
    failures: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def hammering(port: int, workers: int = 8) -> AsyncIterator[Load]:
    load = Load()
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        load.failures.append(f"HTTP {resp.status}: {body[:200]!r}")
                        continue
                    data = await resp.json(content_type=None)
                    load.ok.append((time.time(), int(data["pid"])))
            except (aiohttp.ClientError, ValueError) as exc:
                load.failures.append(repr(exc))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(workers)]
        try:
            yield load
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def assert_served_only_by_ready(daemon: Daemon, load: Load) -> None:
    """Each response came from a process after it was reported ready."""
    ready_at: dict[int, float] = {}
    for event in daemon.events.recent():
        if event.kind == "state" and event.new == "ready" and event.pid is not None:
            ready_at.setdefault(event.pid, event.ts)
    for received, pid in load.ok:
        assert pid in ready_at, f"response from pid {pid}, never reported ready"
        assert ready_at[pid] <= received, f"pid {pid} answered before it was ready"


def _stack(cwd: Path, instances: int, extra: str = "") -> str:
    return f"""
[proxy]
listen = "127.0.0.1:0"
timeouts = {{ connect = "1s", read = "5s", idle = "2s" }}

[services.web]
command = ["{PY}", "web.py"]
cwd = "{cwd}"
instances = {instances}
port = "auto"
venv = false
stop_timeout = "2s"
drain_timeout = "5s"
health = {{ http = "/healthz", interval = "200ms", timeout = "150ms", retries = 2 }}
{extra}
"""


def _project(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(APPS / "web.py", app / "web.py")
    return app


async def _warm(daemon: Daemon, load: Load, count: int = 20) -> None:
    await wait_until(lambda: len(load.ok) >= count, what=f"{count} responses before the change")


async def test_rolling_restart_under_load(tmp_path: Path) -> None:
    path = write_config(tmp_path, _stack(_project(tmp_path), 3))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 3))
        port = daemon.traffic.addresses[0][1]
        before = {r["pid"] for r in rows_of(daemon, "web")}
        async with hammering(port) as load:
            await _warm(daemon, load)
            await daemon.restart(["web"])
            n = len(load.ok)
            await wait_until(lambda: len(load.ok) >= n + 20, what="responses after the roll")
        assert load.failures == []
        assert not before & {r["pid"] for r in rows_of(daemon, "web")}
        assert {pid for _, pid in load.ok} & before, "old instances served before the roll"
        assert {pid for _, pid in load.ok} - before, "new instances served after the roll"
        assert_served_only_by_ready(daemon, load)


async def test_scale_down_under_load(tmp_path: Path) -> None:
    path = write_config(tmp_path, _stack(_project(tmp_path), 4))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 4))
        port = daemon.traffic.addresses[0][1]
        async with hammering(port) as load:
            await _warm(daemon, load, 40)
            await daemon.scale({"web": 1})
            n = len(load.ok)
            await wait_until(lambda: len(load.ok) >= n + 20)
        assert load.failures == []
        assert len(rows_of(daemon, "web")) == 1
        survivor = rows_of(daemon, "web")[0]["pid"]
        late = [pid for t, pid in load.ok[-10:]]
        assert set(late) == {survivor}
        assert_served_only_by_ready(daemon, load)


async def test_kill_9_under_load_loses_no_idempotent_request(tmp_path: Path) -> None:
    import os
    import signal

    path = write_config(tmp_path, _stack(_project(tmp_path), 3))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 3))
        port = daemon.traffic.addresses[0][1]
        async with hammering(port) as load:
            await _warm(daemon, load)
            victim = int(rows_of(daemon, "web")[1]["pid"])  # type: ignore[call-overload]
            os.kill(victim, signal.SIGKILL)
            await wait_until(
                lambda: all_ready(daemon, "web", 3) and rows_of(daemon, "web")[1]["pid"] != victim
            )
            n = len(load.ok)
            await wait_until(lambda: len(load.ok) >= n + 20)
        assert load.failures == []
        assert_served_only_by_ready(daemon, load)


async def test_reload_with_a_new_command_under_load(tmp_path: Path) -> None:
    app = _project(tmp_path)
    path = write_config(tmp_path, _stack(app, 2))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        port = daemon.traffic.addresses[0][1]
        before = {r["pid"] for r in rows_of(daemon, "web")}
        path.write_text(
            path.read_text().replace(
                f'command = ["{PY}", "web.py"]', f'command = ["{PY}", "-u", "web.py"]'
            )
        )
        async with hammering(port) as load:
            await _warm(daemon, load)
            result = await Reloader(daemon).reload()
            assert result["changes"] == ["~ web: changed, rolling restart"]
            n = len(load.ok)
            await wait_until(lambda: len(load.ok) >= n + 20)
        assert load.failures == []
        rows = rows_of(daemon, "web")
        assert not before & {r["pid"] for r in rows}
        assert all(r["state"] == "ready" for r in rows)
        assert_served_only_by_ready(daemon, load)


async def test_watch_triggered_restart_under_load(tmp_path: Path) -> None:
    app = _project(tmp_path)
    path = write_config(tmp_path, _stack(app, 2, extra='watch = ["*.py"]'))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        port = daemon.traffic.addresses[0][1]
        before = {r["pid"] for r in rows_of(daemon, "web")}
        watcher = asyncio.create_task(watch_project(daemon, Reloader(daemon), everything=False))
        try:
            async with hammering(port) as load:
                await _warm(daemon, load)
                # watchfiles needs a moment to set up its inotify watches; edit until it reacts.
                deadline = time.monotonic() + 20
                while not any(
                    e.kind == "service" and e.new == "restarting" for e in daemon.events.recent()
                ):
                    assert time.monotonic() < deadline, "watch never reacted to the edit"
                    (app / "web.py").write_text((app / "web.py").read_text() + "\n# edited\n")
                    await asyncio.sleep(0.5)
                await wait_until(
                    lambda: (
                        not before & {r["pid"] for r in rows_of(daemon, "web")}
                        and all_ready(daemon, "web", 2)
                    ),
                    timeout=30,
                    what="both instances replaced",
                )
                n = len(load.ok)
                await wait_until(lambda: len(load.ok) >= n + 20)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        assert load.failures == []
        assert_served_only_by_ready(daemon, load)
