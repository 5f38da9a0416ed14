"""A backend that records every raw byte it gets and parses it strictly (with h11), behind a
proxy that routes only a few prefixes: what the hostile-client tests (test_hostile.py) probe.

Not a test module itself (it holds no tests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import h11

from config.model import RouteSpec
from tests.test_proxy_support import Proxy, make_pool, raw_exchange, running_proxy


@dataclass
class Seen:
    """One request as the backend parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    upgrade: bool = False

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def ok(seen: Seen) -> bytes | None:
    body = b"seen %s %s\n" % (seen.method, seen.target)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class Recording:
    """What a recording backend received, and how it answers."""

    respond: Callable[[Seen], bytes | None] = ok
    accept_upgrades: bool = False
    raw: list[bytearray] = field(default_factory=list)  # per connection
    requests: list[Seen] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    held: list[Callable[[bytes], None]] = field(default_factory=list)  # answer these later
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def received(self) -> bytes:
        return b"".join(self.raw)


class _Recorder(asyncio.Protocol):
    """One backend connection: records the raw bytes and parses them with h11 (strict)."""

    def __init__(self, rec: Recording) -> None:
        self.rec = rec
        self.raw = bytearray()
        rec.raw.append(self.raw)
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.SERVER)
        self.seen: Seen | None = None
        self.tunnel = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.tunnel:
            self._write(b"echo:" + data)
            return
        self.h11.receive_data(data)
        self._events()

    def eof_received(self) -> None:
        if not self.tunnel:
            self.h11.receive_data(b"")

    def _events(self) -> None:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.rec.malformed.append(f"{exc}: {bytes(self.raw)[-300:]!r}")
                self._close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.h11.our_state is h11.DONE:
                    self.h11.start_next_cycle()  # keep-alive: the next request
                    continue
                return
            if isinstance(event, h11.Request):
                self.seen = Seen(event.method, event.target, list(event.headers))
                self.seen.upgrade = any(k == b"upgrade" for k, _ in event.headers)
            elif isinstance(event, h11.Data):
                assert self.seen is not None
                self.seen.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                return

    def _answer(self) -> None:
        seen = self.seen
        assert seen is not None
        self.rec.requests.append(seen)
        if seen.upgrade and self.rec.accept_upgrades:
            value = (seen.header(b"Upgrade") or [b"x"])[0]
            self._write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"
                % value
            )
            self.tunnel = True
            rest, _ = self.h11.trailing_data
            if rest:
                self._write(b"echo:" + bytes(rest))
            return
        answer = self.rec.respond(seen)
        if answer is None:
            self.rec.held.append(self._write_and_continue)
        else:
            self._write_and_continue(answer)

    def _write_and_continue(self, answer: bytes) -> None:
        # The answer is written raw (a test may send anything); h11 is told it was a plain
        # response so that it parses what follows as the next request, as many servers do
        # after refusing an upgrade.
        self._write(answer)
        if self.h11.our_state is h11.SEND_RESPONSE:
            self.h11.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            self.h11.send(h11.EndOfMessage())
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._events()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@contextlib.asynccontextmanager
async def recording_backend(rec: Recording | None = None) -> AsyncIterator[Recording]:
    rec = rec or Recording()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Recorder(rec), "127.0.0.1", 0)
    rec.host, rec.port = server.sockets[0].getsockname()[:2]
    try:
        yield rec
    finally:
        server.close()
        await server.wait_closed()


ROUTES = ("/public", "/ws", "/upload")


@contextlib.asynccontextmanager
async def hostile_setup(
    rec: Recording | None = None, **spec: object
) -> AsyncIterator[tuple[Recording, Proxy]]:
    """A recording backend behind a proxy that routes only ROUTES (so /admin is a 404)."""
    async with recording_backend(rec) as backend:
        pool = make_pool([(backend.host, backend.port)])
        routes = [(RouteSpec(path=path), pool) for path in ROUTES]
        async with running_proxy(routes, **spec) as proxy:
            yield backend, proxy


async def still_serves(p: Proxy, rec: Recording) -> None:
    """A fresh connection gets an ordinary request through, and the backend saw it as sent."""
    before = len(rec.requests)
    (resp,) = await raw_exchange(p.port, b"GET /public/alive HTTP/1.1\r\nHost: t\r\n\r\n")
    assert resp.status == 200 and resp.body == b"seen GET /public/alive\n"
    assert rec.requests[before].target == b"/public/alive"
    assert not rec.malformed, rec.malformed
