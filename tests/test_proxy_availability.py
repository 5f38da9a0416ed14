"""A pool whose service cannot run answers 503 at once; one whose instances are coming queues.

Real daemons, real instances (tests/apps/web.py), requests through the proxy. queue_timeout is
30 s everywhere here: an answer within a few seconds is the pool knowing nothing will come.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .conftest import all_ready, http_get, running_daemon, state_of, wait_until, web_service
from .conftest import write_config as write

PROXY = '[proxy]\nlisten = "127.0.0.1:0"\nqueue_timeout = "30s"\n'


def proxy_port(daemon: object) -> int:
    return daemon.traffic.addresses[0][1]  # type: ignore[attr-defined,no-any-return]


async def get_at_once(port: int) -> tuple[int, bytes]:
    """A GET that must be answered well before the 30 s queue timeout."""
    return await http_get(port, "/", timeout=5.0)


async def test_a_service_whose_dependency_failed_is_503_at_once(tmp_path: Path) -> None:
    db = web_service("db", extra='env = { CRASH_INSTANCE = "1" }\ncrash_limit = 1')
    api = web_service("api", extra='depends_on = { db = "healthy" }\nroute = { path = "/" }')
    async with running_daemon(write(tmp_path, PROXY + db + api)) as daemon:
        await wait_until(lambda: daemon.services["api"].phase == "failed", what="api failed")
        status, body = await get_at_once(proxy_port(daemon))
        assert status == 503
        assert b"service 'api' failed" in body and b"dependency 'db'" in body


async def test_a_service_whose_instances_all_failed_is_503_at_once(tmp_path: Path) -> None:
    api = web_service(
        "api", extra='env = { CRASH_INSTANCE = "1" }\ncrash_limit = 2\nroute = { path = "/" }'
    )
    async with running_daemon(write(tmp_path, PROXY + api)) as daemon:
        await wait_until(lambda: state_of(daemon, "api.1") == "failed", what="api.1 failed")
        status, body = await get_at_once(proxy_port(daemon))
        assert status == 503 and b"api.1 is failed" in body


async def test_stopped_is_503_at_once_and_started_again_queues(tmp_path: Path) -> None:
    api = web_service("api", extra='route = { path = "/" }')
    async with running_daemon(write(tmp_path, PROXY + api)) as daemon:
        port = proxy_port(daemon)
        await wait_until(lambda: all_ready(daemon, "api", 1), what="api ready")
        await daemon.stop(["api"])
        status, body = await get_at_once(port)
        assert status == 503 and b"api.1 is stopped" in body
        # Starting again: the instance is on its way, so a request waits for it.
        await daemon.start(["api"])
        status, _ = await asyncio.wait_for(http_get(port, "/", timeout=20.0), 25)
        assert status == 200
