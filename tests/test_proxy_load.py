"""Under load: draining and killing backends with zero failed requests; bounded memory.

Backends that get killed are real processes (`sys.executable -c ...`); the proxy runs in the
test's event loop. No wall-clock performance assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import psutil

from config.model import Balance
from proxy.pool import Pool
from tests.test_proxy_support import (
    Runner,
    make_pool,
    running_backend,
    running_proxy,
    wait_until,
)

BACKEND = r"""
import asyncio, sys
from aiohttp import web

NAME = sys.argv[1]

async def hello(request):
    delay = float(request.query.get("delay", "0"))
    if delay:
        await asyncio.sleep(delay)
    return web.Response(text=NAME, headers={"X-Backend": NAME})

async def upload(request):
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.json_response({"size": size})

async def download(request):
    n = int(request.query["mb"])
    resp = web.StreamResponse()
    resp.content_length = n << 20
    await resp.prepare(request)
    chunk = b"x" * (1 << 20)
    for _ in range(n):
        await resp.write(chunk)
    return resp

async def main():
    app = web.Application(client_max_size=1 << 40)
    app.router.add_get("/", hello)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    port: int


@contextlib.asynccontextmanager
async def backend_processes(*names: str) -> AsyncIterator[dict[str, Child]]:
    """Backend processes that print their port when listening; all reaped on exit."""
    children: dict[str, Child] = {}
    try:
        for name in names:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", BACKEND, name, stdout=asyncio.subprocess.PIPE
            )
            assert proc.stdout is not None
            async with asyncio.timeout(15):
                port = int(await proc.stdout.readline())
            children[name] = Child(name, proc, port)
        yield children
    finally:
        for child in children.values():
            if child.proc.returncode is None:
                child.proc.kill()
            await child.proc.wait()


def pool_of(children: dict[str, Child], balance: Balance = Balance.ROUND_ROBIN) -> Pool:
    pool = Pool("web", balance)
    for c in children.values():
        pool.add(c.name, "127.0.0.1", c.port)
        pool.set_ready(c.name, True)
    return pool


@dataclass
class Load:
    """Concurrent clients hammering the proxy with GETs until stopped; counts outcomes."""

    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    by_backend: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            try:
                async with session.get(self.url) as r:
                    await r.read()
                    if r.status != 200:
                        self.failures.append(f"status {r.status}: {r.headers}")
                        continue
                    who = r.headers.get("X-Backend", "?")
                    self.by_backend[who] = self.by_backend.get(who, 0) + 1
                    self.ok += 1
            except aiohttp.ClientError as exc:
                self.failures.append(repr(exc))

    @contextlib.asynccontextmanager
    async def running(self, clients: int = 16) -> AsyncIterator[Load]:
        conn = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=conn) as session:
            tasks = [asyncio.create_task(self.worker(session)) for _ in range(clients)]
            try:
                yield self
            finally:
                self.stop.set()
                await asyncio.gather(*tasks)

    async def until(self, more: int) -> None:
        """Wait until `more` further requests succeeded."""
        target = self.ok + more
        await wait_until(lambda: self.ok >= target or bool(self.failures), 20, "load progress")


def test_draining_under_concurrent_load_loses_nothing(run: Runner) -> None:
    async def scenario() -> None:
        async with running_backend("a") as a, running_backend("b") as b, running_backend("c") as c:
            pool = make_pool([a, b, c], balance=Balance.LEAST_CONN)
            async with running_proxy(pool) as p:
                load = Load(p.url + "/slow?delay=0.005")
                async with load.running():
                    await load.until(150)
                    await pool.drain("b", timeout=10.0)
                    arrived_at_b = b.state["arrived"]
                    await load.until(150)
                    assert b.state["arrived"] == arrived_at_b  # nothing new reached b
                    await pool.drain("a", timeout=10.0)
                    await load.until(100)
                assert load.failures == []
                assert [s["key"] for s in pool.snapshot()] == ["c"]
                assert arrived_at_b > 0 and load.by_backend["b"] == arrived_at_b

    run(scenario(), timeout=40)


def test_killing_backends_under_load_fails_no_idempotent_request(run: Runner) -> None:
    async def scenario() -> None:
        async with backend_processes("k1", "k2", "k3") as kids:
            pool = pool_of(kids)
            async with running_proxy(pool, retries=2) as p:
                k2 = next(b for b in pool.backends() if b.key == "k2")
                load = Load(p.url + "/?delay=0.002")
                async with load.running(clients=24):
                    await load.until(200)
                    os.kill(kids["k2"].proc.pid, signal.SIGKILL)  # in-flight requests die
                    await kids["k2"].proc.wait()
                    await load.until(100)  # the daemon has not noticed yet: retries cover it
                    pool.remove("k2")  # ...now it has
                    await load.until(200)
                    os.kill(kids["k3"].proc.pid, signal.SIGKILL)
                    pool.remove("k3")
                    await load.until(200)
                assert load.failures == []
                assert set(load.by_backend) == {"k1", "k2", "k3"}
                assert k2.failures > 0  # requests did hit the dead backend, and were retried

    run(scenario(), timeout=50)


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[list[int]]:
    """Samples this process's RSS while the block runs; yields [baseline, peak]."""
    sample = [_rss(), _rss()]
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            sample[1] = max(sample[1], _rss())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.01):
                    await done.wait()

    task = asyncio.create_task(sampler())
    try:
        yield sample
    finally:
        done.set()
        await task
        sample[1] = max(sample[1], _rss())


def test_large_streams_pass_with_bounded_memory(run: Runner) -> None:
    mb = 200
    chunk = b"u" * (1 << 20)

    async def scenario() -> None:
        async with backend_processes("big") as kids, running_proxy(pool_of(kids)) as p:

            async def body() -> AsyncIterator[bytes]:
                for _ in range(mb):
                    yield chunk  # the same object each time: the client adds no memory

            async with aiohttp.ClientSession() as s:
                async with peak_rss() as up:
                    async with s.post(p.url + "/upload", data=body()) as r:
                        assert (await r.json())["size"] == mb << 20
                async with peak_rss() as down:
                    got = 0
                    async with s.get(f"{p.url}/download?mb={mb}") as r:
                        async for piece in r.content.iter_any():
                            got += len(piece)
                    assert got == mb << 20
            # 200 MiB went through each way; the proxy (and client) held a few MiB at most.
            assert up[1] - up[0] < 48 << 20, (up[1] - up[0]) >> 20
            assert down[1] - down[0] < 48 << 20, (down[1] - down[0]) >> 20

    run(scenario(), timeout=50)
