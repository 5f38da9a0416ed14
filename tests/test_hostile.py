"""Hostile clients and misbehaving backends, probe by probe, over raw sockets.

Every probe asserts what the client got, what the backend received (a backend that records
every raw byte and parses it strictly with its own parser), and that the proxy still serves
afterwards. The property-based test at the end feeds generated requests to the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
import pytest

from config.model import RouteSpec
from tests.test_proxy_support import (
    Proxy,
    Runner,
    make_pool,
    raw_exchange,
    read_response,
    running_proxy,
    wait_until,
)

# --- a backend that records everything ------------------------------------------------------------


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
    def __init__(self, rec: Recording) -> None:
        self.rec = rec
        self.raw = bytearray()
        rec.raw.append(self.raw)
        self.transport: asyncio.Transport | None = None
        self.tunnel = False
        self._new_parser()

    def _new_parser(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.seen: Seen | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.tunnel:
            self._write(b"echo:" + data)
            return
        while data:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                rest = data[exc.args[0] :]
                if self.rec.accept_upgrades:
                    self.tunnel = True
                    if rest:
                        self._write(b"echo:" + rest)
                    return
                # Refused: like many servers, read what follows as the next request. A proxy
                # that forwarded bytes behind the upgrade request would be caught here.
                self._new_parser()
                data = rest
            except httptools.HttpParserError as exc:
                self.rec.malformed.append(f"{exc}: {bytes(self.raw)[-200:]!r}")
                if self.transport is not None:
                    self.transport.close()
                return

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.seen = Seen(b"", b"", [])
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.seen is not None
        self.seen.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.seen is not None
        self.seen.method = self.parser.get_method()
        self.seen.target = self.url
        self.seen.upgrade = self.parser.should_upgrade()

    def on_body(self, body: bytes) -> None:
        assert self.seen is not None
        self.seen.body += body

    def on_message_complete(self) -> None:
        seen = self.seen
        assert seen is not None
        self.rec.requests.append(seen)
        if seen.upgrade and self.rec.accept_upgrades:
            value = (seen.header(b"Upgrade") or [b"x"])[0]
            self._write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"
                % value
            )
            return
        answer = self.rec.respond(seen)
        if answer is None:
            self.rec.held.append(self._write)
        else:
            self._write(answer)


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


async def read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.read()


@pytest.fixture
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> object:
    """Fail the test if the proxy logged an internal error (an exception it did not expect)."""
    caplog.set_level(logging.ERROR, logger="proxy")
    yield caplog
    bad = [r for r in caplog.records if "internal error" in r.getMessage() or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# --- 1. upgrades: bytes behind the request are held until the backend says 101 --------------------

SMUGGLED = (
    b"POST /admin HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Length: 4\r\n\r\nbody"
)
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_bytes_behind_a_refused_upgrade_never_reach_the_backend(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(UPGRADE + SMUGGLED)  # one packet
            resp = await read_response(reader)
            assert resp.status == 200 and resp.body == b"seen GET /ws\n"
            assert resp.header("Connection") == "close"
            assert await read_all(reader) == b""  # closed after the refusal, nothing else
            writer.close()
            assert [s.target for s in rec.requests] == [b"/ws"]
            assert b"/admin" not in rec.received and b"6.6.6.6" not in rec.received
            await still_serves(p, rec)

    run(scenario())


def test_bytes_sent_after_an_upgrade_request_wait_for_the_answer(
    run: Runner, no_internal_errors: object
) -> None:
    # The smuggled request arrives in a second packet, while the backend is still deciding.
    async def scenario() -> None:
        hold_upgrades = Recording(respond=lambda seen: None if seen.upgrade else ok(seen))
        async with hostile_setup(hold_upgrades) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(UPGRADE)
            await wait_until(lambda: bool(rec.held), what="the upgrade request upstream")
            writer.write(SMUGGLED)
            await wait_until(
                lambda: held_by_proxy(p) >= len(SMUGGLED), what="the proxy to read the bytes"
            )
            assert b"/admin" not in rec.received
            rec.held[0](b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")
            resp = await read_response(reader)
            assert resp.status == 403 and resp.header("Connection") == "close"
            assert await read_all(reader) == b""
            writer.close()
            assert [s.target for s in rec.requests] == [b"/ws"]
            assert b"/admin" not in rec.received
            await still_serves(p, rec)

    run(scenario())


def held_by_proxy(p: Proxy) -> int:
    """Bytes the proxy holds behind upgrade requests (white-box: for waiting, not asserting)."""
    total = 0
    for client in p.server._ctx.clients:
        ex = getattr(client, "upgrading", None)
        total += ex.held_size if ex is not None else 0
    return total


def test_bytes_behind_an_accepted_upgrade_open_the_tunnel(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup(Recording(accept_upgrades=True)) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(UPGRADE + b"hello")
            resp = await read_response(reader, head_only=True)
            assert resp.status == 101
            assert await reader.readexactly(len(b"echo:hello")) == b"echo:hello"
            writer.write(b"more")
            assert await reader.readexactly(len(b"echo:more")) == b"echo:more"
            writer.close()
            assert rec.received.endswith(b"\r\n\r\nhellomore")
            await still_serves(p, rec)

    run(scenario())


def test_an_upgrade_request_with_a_body_is_refused(run: Runner, no_internal_errors: object) -> None:
    # Its parser stops at the head: the body could not be told from the new protocol's bytes.
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            (resp,) = await raw_exchange(
                p.port, UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 4\r\n\r\n") + b"body"
            )
            assert resp.status == 400 and "body" in resp.body.decode()
            assert rec.requests == [] and rec.received == b""
            await still_serves(p, rec)

    run(scenario())


# --- 1b. a backend that answers twice ---------------------------------------------------------------


def test_two_responses_in_one_read_relay_the_first_and_drop_the_connection(
    run: Runner, no_internal_errors: object
) -> None:
    def twice(seen: Seen) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfirst\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsecond\n"
        )

    async def scenario() -> None:
        async with hostile_setup(Recording(respond=twice)) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            for i in range(2):
                writer.write(b"GET /public/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
                resp = await read_response(reader)
                assert resp.status == 200 and resp.body == b"first\n"
            writer.close()
            # The extra response made the connection unusable: each request got a fresh one.
            assert len(rec.raw) == 2
            assert [s.target for s in rec.requests] == [b"/public/0", b"/public/1"]

    run(scenario())
