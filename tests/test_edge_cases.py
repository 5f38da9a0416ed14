"""Orders that arrive at awkward moments: during shutdown, while waiting on dependencies,
after a failed start; and routes that appear or vanish by reload."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from supervisor.errors import SupervisorError, TargetError
from supervisor.instance import State
from supervisor.reload import Reloader

from .conftest import (
    PY,
    all_ready,
    running_daemon,
    state_of,
    wait_until,
    web_command,
    web_service,
    write_config,
)

PROXY = '\n[proxy]\nlisten = "127.0.0.1:0"\n'

NEVER_READY_DB = f"""
[services.db]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
port = "auto"
venv = false
stop_timeout = "1s"
"""

API = f"""
[services.api]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
stop_timeout = "1s"
"""


async def test_orders_during_shutdown_are_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=2))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        service = daemon.services["web"]
        daemon.shutdown_requested.set()
        await wait_until(
            lambda: (
                service.phase == "stopped"
                and all(i.state is State.STOPPED for i in service.instances.values())
            )
        )
        for order in (
            daemon.start(["web"]),
            daemon.restart(["web"]),
            daemon.scale({"web": 3}),
            Reloader(daemon).reload(),
        ):
            with pytest.raises(SupervisorError, match="shutting down"):
                await order
    # running_daemon asserts that no process with the daemon's token is left.


async def test_route_added_by_reload_puts_ready_instances_in_the_pool(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, PROXY + web_service("web") + web_service("other", extra='route = { path = "/o" }')
    )
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1) and all_ready(daemon, "other", 1))
        path.write_text(
            PROXY
            + web_service("web", extra='route = { path = "/" }')
            + web_service("other", extra='route = { path = "/o" }')
        )
        await Reloader(daemon).reload()
        assert [b["ready"] for b in daemon.traffic.pools["web"].snapshot()] == [True]


async def test_route_removed_then_added_again(tmp_path: Path) -> None:
    routed = PROXY + web_service("web", extra='route = { path = "/" }')
    path = write_config(tmp_path, routed)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        path.write_text(
            PROXY + web_service("web") + web_service("other", extra='route = { path = "/o" }')
        )
        await Reloader(daemon).reload()
        assert "web" not in daemon.traffic.pools
        path.write_text(routed)
        await Reloader(daemon).reload()
        assert [b["ready"] for b in daemon.traffic.pools["web"].snapshot()] == [True]


async def test_a_dependency_with_zero_instances_counts_once_started(tmp_path: Path) -> None:
    text = f"""
[services.a]
command = ["{PY}", "-c", "import time; time.sleep(0.3)"]
oneshot = true
venv = false

[services.b]
{web_command()}
port = "auto"
venv = false
instances = 0
depends_on = {{ a = "completed" }}

[services.c]
command = ["{PY}", "-c", "import time; time.sleep(60)"]
venv = false
depends_on = {{ b = "healthy" }}
"""
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(
            lambda: state_of(daemon, "c.1") == "running", what="c after b (0 instances)"
        )


async def test_reload_that_drops_a_dependency_releases_the_waiter(tmp_path: Path) -> None:
    path = write_config(tmp_path, NEVER_READY_DB + API + 'depends_on = { db = "healthy" }\n')
    async with running_daemon(path) as daemon:
        await wait_until(lambda: daemon.services["api"].phase == "waiting")
        path.write_text(API)
        await Reloader(daemon).reload()
        await wait_until(lambda: state_of(daemon, "api.1") == "running")


async def test_reload_that_changes_a_condition_rewaits(tmp_path: Path) -> None:
    path = write_config(tmp_path, NEVER_READY_DB + API + 'depends_on = { db = "healthy" }\n')
    async with running_daemon(path) as daemon:
        await wait_until(lambda: daemon.services["api"].phase == "waiting")
        path.write_text(NEVER_READY_DB + API + 'depends_on = { db = "started" }\n')
        await Reloader(daemon).reload()
        await wait_until(lambda: state_of(daemon, "api.1") == "running")


async def test_stop_while_waiting_holds_the_service_until_start(tmp_path: Path) -> None:
    path = write_config(tmp_path, NEVER_READY_DB + API + 'depends_on = { db = "healthy" }\n')
    async with running_daemon(path) as daemon:
        await wait_until(lambda: daemon.services["api"].phase == "waiting")
        await daemon.stop(["api"])
        # Its pending start-up is cancelled: nothing will start it when db gets ready.
        assert daemon.services["api"].phase == "held"
        assert state_of(daemon, "api.1") == "stopped"
        assert not daemon.cancel_bring_up(daemon.services["api"])  # nothing left waiting
        await daemon.start(["api"])
        await wait_until(lambda: daemon.services["api"].phase == "waiting")


async def test_restart_of_an_instance_that_never_got_its_port(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    path = write_config(tmp_path, f"[services.web]\n{web_command()}\nport = {port}\nvenv = false\n")
    try:
        async with running_daemon(path) as daemon:
            await wait_until(lambda: state_of(daemon, "web.1") == "failed")
            squatter.close()
            await daemon.restart(["web"], rolling=False)
            await wait_until(lambda: all_ready(daemon, "web", 1))
            assert daemon.services["web"].instances[1].port == port
    finally:
        squatter.close()


async def test_scale_takes_service_names_only(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web"))
    async with running_daemon(path) as daemon:
        with pytest.raises(TargetError, match="scale takes service names"):
            await daemon.scale({"web.1": 2})
