"""Helpers for the proxy tests: real backends, a real proxy, raw-socket clients.

Not a test module itself (it holds no tests); the other tests/test_proxy_*.py import it.
Everything binds 127.0.0.1 port 0 and waits on events or deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import uvloop
from aiohttp import WSMsgType, web

from config.model import Balance, HashKey, ProxySpec, RouteSpec
from proxy.pool import Pool
from proxy.router import Router
from proxy.server import ProxyServer

T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class Runner(Protocol):
    """Runs a scenario coroutine to completion on a fresh loop, within `timeout` seconds."""

    def __call__(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T: ...


def runner(loop_name: str) -> Runner:
    """A Runner on the named loop; test modules parametrize a `run` fixture over LOOPS."""

    def _run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await coro

        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as r:
            return r.run(bounded())

    return _run


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll `predicate` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


# --- backends ---------------------------------------------------------------------------------


@dataclass
class Backend:
    """A running in-process aiohttp backend."""

    name: str
    host: str
    port: int
    runner: web.AppRunner
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name


def _app(name: str, state: dict[str, Any]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        state.setdefault("seen", []).append(request.raw_path)
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "raw_path": request.raw_path,
                "version": f"{request.version.major}.{request.version.minor}",
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
            },
            headers={"X-Backend": name},
        )

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            digest.update(chunk)
        return web.json_response({"backend": name, "size": size, "sha256": digest.hexdigest()})

    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        size = int(request.query.get("size", "10"))
        resp = web.StreamResponse(headers={"X-Backend": name})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(n):
            await resp.write(bytes([65 + i % 26]) * size)
        await resp.write_eof()
        return resp

    async def sse(request: web.Request) -> web.StreamResponse:
        # Sends one event, then waits until the test saw it arrive: proves no buffering.
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await state["sse_gate"].wait()
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp

    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(b"squeezed " * 100)
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code in (204, 304):
            return web.Response(status=code, headers={"X-Backend": name})
        return web.Response(status=code, text=f"status {code} from {name}\n")

    async def cookies(request: web.Request) -> web.Response:
        resp = web.Response(
            status=302,
            text="moved",
            headers={"Location": "http://elsewhere.example/a%20b?x=1&y=%2F"},
        )
        resp.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
        resp.headers.add("Set-Cookie", "b=two words; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
        return resp

    async def slow(request: web.Request) -> web.Response:
        state["arrived"] = state.get("arrived", 0) + 1
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text=f"slow from {name}\n", headers={"X-Backend": name})

    async def hold(request: web.Request) -> web.Response:
        # Counts the request in, then waits for the test to release it.
        state["held"] = state.get("held", 0) + 1
        await state["hold_gate"].wait()
        return web.Response(text=f"held by {name}\n", headers={"X-Backend": name})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
                await sock.close(code=int(msg.data[6:]), message=b"bye")
            elif msg.type is WSMsgType.TEXT:
                await sock.send_str(f"{name}:{msg.data}")
            elif msg.type is WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        state["ws_close_code"] = sock.close_code
        return sock

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/stream", stream)
    app.router.add_get("/sse", sse)
    app.router.add_get("/gzip", gzipped)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hold", hold)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@contextlib.asynccontextmanager
async def running_backend(name: str = "b1") -> AsyncIterator[Backend]:
    """An aiohttp backend on 127.0.0.1:0 with the routes above."""
    state: dict[str, Any] = {"sse_gate": asyncio.Event(), "hold_gate": asyncio.Event()}
    runner = web.AppRunner(_app(name, state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Backend(name, host, port, runner, state)
    finally:
        state["sse_gate"].set()
        state["hold_gate"].set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_raw_backend(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, int]]:
    """A hand-written TCP backend for framing traps; `handler` serves one connection."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    assert isinstance(host, str) and isinstance(port, int)
    try:
        yield host, port
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """One request head (through the blank line) from a raw backend's reader."""
    return await reader.readuntil(b"\r\n\r\n")


# --- the proxy --------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A running proxy with its pool(s); `url` points at the first listen address."""

    server: ProxyServer
    router: Router
    pools: dict[str, Pool]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pool(self) -> Pool:
        return next(iter(self.pools.values()))


def make_pool(
    backends: Sequence[Backend | tuple[str, int]],
    name: str = "web",
    balance: Balance = Balance.ROUND_ROBIN,
    hash_key: HashKey | None = None,
    weights: list[int] | None = None,
) -> Pool:
    """A pool with `backends`, all ready."""
    pool = Pool(name, balance, hash_key or HashKey())
    for i, b in enumerate(backends):
        if isinstance(b, Backend):
            key, host, port = b.key, b.host, b.port
        else:
            host, port = b
            key = f"{host}:{port}"
        pool.add(key, host, port, weights[i] if weights else 1)
        pool.set_ready(key, True)
    return pool


FAST = ProxySpec(
    listen=(("127.0.0.1", 0),),
    connect_timeout=2.0,
    read_timeout=10.0,
    queue_timeout=2.0,
)


@contextlib.asynccontextmanager
async def running_proxy(
    routes: list[tuple[RouteSpec, Pool]] | Pool,
    **spec: Any,
) -> AsyncIterator[Proxy]:
    """A ProxyServer on 127.0.0.1:0 for `routes` (a bare pool gets the "/" route)."""
    if isinstance(routes, Pool):
        routes = [(RouteSpec(), routes)]
    router = Router()
    router.set_routes(routes)
    server = ProxyServer(replace(FAST, **spec), router)
    addresses = await server.start()
    host, port = addresses[0]
    try:
        yield Proxy(server, router, {p.name: p for _, p in routes}, host, port)
    finally:
        await server.stop(grace=2.0)


# --- raw clients --------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    """One HTTP/1.1 response from `reader`: CL, chunked (decoded) or until EOF."""
    raw_head = await reader.readuntil(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    _, code, *reason = lines[0].split(" ", 2)
    headers = [
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)
    ]
    resp = RawResponse(int(code), reason[0] if reason else "", headers, b"", raw_head)
    status = resp.status
    if head_only or status in (204, 304) or 100 <= status < 200:
        return resp
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    if te is not None and "chunked" in te.lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


async def raw_exchange(
    port: int, data: bytes, *, responses: int = 1, head_only: bool = False
) -> list[RawResponse]:
    """Send raw bytes to the proxy and read `responses` responses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return [await read_response(reader, head_only=head_only) for _ in range(responses)]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def body_json(resp: RawResponse) -> dict[str, Any]:
    data = json.loads(resp.body)
    assert isinstance(data, dict)
    return data


def header_map(echo: dict[str, Any]) -> dict[str, list[str]]:
    """Headers an /echo backend saw, lower-cased name → values."""
    out: dict[str, list[str]] = {}
    for k, v in echo["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out
