"""The proxy's DNS-discovery backend and the entry file: how a promoted stack's entry proxy
finds replicas. Backends are real servers on 127.0.0.2-4 sharing one port, as replicas share a
port behind one DNS name; the name's answers come from a resolver seam (like an injected clock),
and the real system resolver is used through `corral proxy --backend-dns localhost:PORT`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from config import ConfigError
from config.entry import EntryRoute, EntrySpec, load_entry
from config.model import Balance, ProxySpec, RouteSpec
from proxy.discovery import changes, resolve
from proxy.standalone import run_entry
from supervisor.ports import free_port

from .conftest import http_get, wait_until

CORRAL = [sys.executable, "-m", "supervisor"]
WEB = Path(__file__).parent / "apps" / "web.py"


def test_changes_are_sorted_additions_and_removals() -> None:
    assert changes(["10.0.0.2", "10.0.0.1"], ["10.0.0.3", "10.0.0.1"]) == (
        ["10.0.0.3"],
        ["10.0.0.2"],
    )
    assert changes([], []) == ([], [])
    assert changes(["a"], ["a"]) == ([], [])


class Replicas:
    """aiohttp servers on 127.0.0.N:port, one per address; /hold waits for `release`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.runners: dict[str, web.AppRunner] = {}
        self.release = asyncio.Event()
        self.holding = 0

    async def start(self, address: str) -> None:
        async def index(request: web.Request) -> web.Response:
            return web.json_response({"replica": address, "path": request.raw_path})

        async def hold(request: web.Request) -> web.Response:
            self.holding += 1
            await self.release.wait()
            return web.json_response({"replica": address, "held": True})

        app = web.Application()
        app.router.add_get("/hold", hold)
        app.router.add_route("*", "/{tail:.*}", index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, address, self.port).start()
        self.runners[address] = runner

    async def stop(self) -> None:
        self.release.set()
        for runner in self.runners.values():
            await runner.cleanup()


def _shared_port(addresses: list[str]) -> int:
    """A port free on every one of `addresses` (replicas of one service share their port)."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for address in addresses:
                sock = socket.socket()
                socks.append(sock)
                sock.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no port free on all of " + ", ".join(addresses))


class Dns:
    """The resolver seam: answers what the test says, or fails like an unreachable server."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.failing = False
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        if self.failing:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return list(self.addresses)


@contextlib.asynccontextmanager
async def entry_proxy(routes: list[EntryRoute], dns: Dns) -> AsyncIterator[int]:
    stop = asyncio.Event()
    bound: list[tuple[str, int]] = []
    spec = ProxySpec(listen=(("127.0.0.1", 0),), connect_timeout=1.0, queue_timeout=2.0)
    task = asyncio.create_task(
        run_entry(EntrySpec(spec, tuple(routes)), shutdown=stop, started=bound.extend, resolver=dns)
    )
    try:
        await wait_until(lambda: bool(bound) or task.done(), what="the entry proxy to listen")
        if task.done():
            task.result()
        yield bound[0][1]
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def _who(port: int, path: str = "/") -> str:
    status, body = await http_get(port, path)
    assert status == 200, (status, body)
    return str(json.loads(body)["replica"])


async def _answering(port: int, expected: set[str]) -> bool:
    seen = {await _who(port) for _ in range(12)}
    return seen == expected


async def test_members_follow_the_name_and_leavers_are_drained() -> None:
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    replicas = Replicas(_shared_port(addresses))
    for address in addresses:
        await replicas.start(address)
    dns = Dns("127.0.0.2", "127.0.0.3")
    route = EntryRoute("api", backend_dns=(("api", replicas.port),), resolve_interval=0.05)
    try:
        async with entry_proxy([route], dns) as port:
            await wait_until(lambda: _answering(port, {"127.0.0.2", "127.0.0.3"}), what="2 members")
            held = [asyncio.create_task(http_get(port, "/hold")) for _ in range(4)]
            await wait_until(lambda: replicas.holding == 4, what="4 requests held")

            dns.addresses = ["127.0.0.3", "127.0.0.4"]
            await wait_until(lambda: _answering(port, {"127.0.0.3", "127.0.0.4"}), what=".2 out")

            # The leaver was drained, not cut off: its held requests still get their answers.
            replicas.release.set()
            results = await asyncio.gather(*held)
            assert [status for status, _ in results] == [200] * 4
            assert {json.loads(body)["replica"] for _, body in results} == {
                "127.0.0.2",
                "127.0.0.3",
            }
    finally:
        await replicas.stop()


async def test_a_failed_lookup_keeps_the_members() -> None:
    replicas = Replicas(_shared_port(["127.0.0.2"]))
    await replicas.start("127.0.0.2")
    dns = Dns("127.0.0.2")
    route = EntryRoute("api", backend_dns=(("api", replicas.port),), resolve_interval=0.05)
    try:
        async with entry_proxy([route], dns) as port:
            await wait_until(lambda: _answering(port, {"127.0.0.2"}), what="the member")
            dns.failing = True
            failed_from = dns.lookups
            await wait_until(lambda: dns.lookups >= failed_from + 3, what="3 failed lookups")
            assert await _who(port) == "127.0.0.2"
            dns.failing = False
            dns.addresses = []  # an empty answer is an answer: the member leaves
            await wait_until(
                lambda: _status(port, 503), timeout=10, what="503 once no member is left"
            )
    finally:
        await replicas.stop()


async def _status(port: int, expected: int) -> bool:
    status, _ = await http_get(port, "/")
    return status == expected


async def test_a_new_member_gets_traffic_only_once_its_port_accepts() -> None:
    replicas = Replicas(_shared_port(["127.0.0.2", "127.0.0.3"]))
    await replicas.start("127.0.0.2")
    dns = Dns("127.0.0.2", "127.0.0.3")  # .3 is in DNS but nothing listens there yet
    route = EntryRoute("api", backend_dns=(("api", replicas.port),), resolve_interval=0.05)
    try:
        async with entry_proxy([route], dns) as port:
            await wait_until(lambda: _answering(port, {"127.0.0.2"}), what="the first member")
            assert {await _who(port) for _ in range(20)} == {"127.0.0.2"}
            await replicas.start("127.0.0.3")
            await wait_until(lambda: _answering(port, {"127.0.0.2", "127.0.0.3"}), what="both")
    finally:
        await replicas.stop()


async def test_routes_keep_their_prefix_and_balance() -> None:
    replicas = Replicas(_shared_port(["127.0.0.2", "127.0.0.3"]))
    await replicas.start("127.0.0.2")
    await replicas.start("127.0.0.3")
    routes = [
        EntryRoute(
            "api",
            route=RouteSpec(path="/api", strip_prefix=True),
            backend_dns=(("api", replicas.port),),
            resolve_interval=0.05,
        ),
        EntryRoute("web", backends=(("127.0.0.3", replicas.port),), balance=Balance.LEAST_CONN),
    ]
    dns = Dns("127.0.0.2")
    try:
        async with entry_proxy(routes, dns) as port:
            status, body = await http_get(port, "/api/items?x=1")
            assert status == 200
            assert json.loads(body) == {"replica": "127.0.0.2", "path": "/items?x=1"}
            status, body = await http_get(port, "/other")
            assert json.loads(body) == {"replica": "127.0.0.3", "path": "/other"}
    finally:
        await replicas.stop()


async def test_the_system_resolver_answers_localhost() -> None:
    assert "127.0.0.1" in await resolve("localhost", 80)


# --- corral proxy: the command the entry containers run ------------------------------------------


def _web(port: int, service: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "CORRAL_SERVICE": service, "CORRAL_INSTANCE": "1"}
    return subprocess.Popen([sys.executable, str(WEB)], env=env, stdout=subprocess.DEVNULL)


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            data = json.loads(response.read())
    except OSError:
        return None
    assert isinstance(data, dict)
    return data


def _poll(predicate: object, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(proxy: subprocess.Popen[bytes], *others: subprocess.Popen[bytes]) -> None:
    try:
        if proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)
            assert proxy.wait(timeout=15) == 0
    finally:
        for p in (proxy, *others):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_corral_proxy_backend_dns_uses_the_system_resolver(tmp_path: Path) -> None:
    backend_port, listen = free_port(), free_port()
    backend = _web(backend_port, "api")
    args = ["proxy", "--listen", f"127.0.0.1:{listen}", "--resolve-interval", "200ms"]
    with open(tmp_path / "proxy.log", "wb") as log:
        proxy = subprocess.Popen(
            [*CORRAL, *args, "--backend-dns", f"localhost:{backend_port}"], stderr=log
        )
    try:
        _poll(
            lambda: (_get(f"http://127.0.0.1:{listen}/") or {}).get("instance") == "api.1",
            what="localhost's replica answering through `corral proxy --backend-dns`",
        )
    finally:
        _stop(proxy, backend)
    assert f"dns localhost:{backend_port}" in (tmp_path / "proxy.log").read_text()


def test_corral_proxy_config_serves_every_route(tmp_path: Path) -> None:
    api_port, web_port, listen = free_port(), free_port(), free_port()
    backends = [_web(api_port, "api"), _web(web_port, "web")]
    entry = tmp_path / "entry.toml"
    entry.write_text(
        textwrap.dedent(
            f"""
            [proxy]
            listen = "127.0.0.1:{listen}"
            timeouts = {{ connect = "1s" }}

            [routes.api]
            route = {{ path = "/api", strip_prefix = true }}
            balance = "least_conn"
            backend_dns = "localhost:{api_port}"
            resolve_interval = "200ms"
            drain_timeout = "5s"

            [routes.web]
            route = {{ path = "/" }}
            backends = ["127.0.0.1:{web_port}"]
            """
        )
    )
    proxy = subprocess.Popen([*CORRAL, "proxy", "--config", str(entry)], stderr=subprocess.DEVNULL)
    try:
        _poll(
            lambda: (_get(f"http://127.0.0.1:{listen}/api/x") or {}).get("instance") == "api.1",
            what="the /api route",
        )
        assert (_get(f"http://127.0.0.1:{listen}/x") or {}).get("instance") == "web.1"
    finally:
        _stop(proxy, *backends)


def test_corral_proxy_needs_backends_or_a_config() -> None:
    result = subprocess.run(
        [*CORRAL, "proxy", "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "at least one --backend or --backend-dns is required" in result.stderr


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("[proxy]\n", "routes", "expected at least one [routes.NAME] table"),
        ("[routes.api]\n", "routes.api.backends", "expected backends or backend_dns"),
        (
            '[routes.api]\nbackend_dns = "api"\n',
            "routes.api.backend_dns",
            'expected addresses like "api:8000", got "api"',
        ),
        (
            '[routes.api]\nbackends = ["a:1"]\nhash_on = "ip"\n',
            "routes.api.hash_on",
            'only applies with balance = "hash"',
        ),
        (
            '[routes.api]\nbackends = ["a:1"]\nresolve = "1s"\n',
            "routes.api",
            "unknown key 'resolve'",
        ),
        (
            '[routes.a]\nbackends = ["a:1"]\n[routes.b]\nbackends = ["b:1"]\n',
            "routes.b.route",
            'is also the route of "a"',
        ),
    ],
)
def test_entry_file_errors_name_file_and_key(
    tmp_path: Path, body: str, key: str, message: str
) -> None:
    path = tmp_path / "entry.toml"
    path.write_text(body)

    with pytest.raises(ConfigError) as info:
        load_entry(path)

    assert (info.value.file, info.value.key) == (path, key)
    assert info.value.message.startswith(message), info.value.message
