"""Hostile clients and misbehaving backends, probe by probe, over raw sockets.

Every probe asserts what the client got, what the backend received (the recording backend of
test_proxy_recorder.py: every raw byte, parsed strictly with h11), and that the proxy still
serves afterwards. The property-based test at the end feeds generated requests to the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import resource
import socket
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.ports import free_port
from tests.conftest import APPS, web_service, write_config
from tests.test_proxy_recorder import (
    ROUTES,
    Recording,
    Seen,
    hostile_setup,
    ok,
    still_serves,
)
from tests.test_proxy_support import (
    Proxy,
    Runner,
    make_pool,
    raw_exchange,
    read_response,
    running_proxy,
    running_raw_backend,
    wait_until,
)


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


# --- 2. pipelining is bounded per connection -------------------------------------------------------


def pipelined(n: int, path: bytes = b"/public/p") -> bytes:
    return b"".join(b"GET %s%d HTTP/1.1\r\nHost: t\r\n\r\n" % (path, i) for i in range(n))


def test_a_deep_pipeline_is_parsed_a_few_requests_ahead_and_answered_in_order(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            n = 3000
            writer.write(pipelined(n))  # ~100 KB, and nothing is read for now
            await wait_until(lambda: len(rec.requests) >= 50, what="requests upstream")
            for client in p.server._ctx.clients:  # white-box: what the proxy holds
                assert len(getattr(client, "queue", ())) <= 8
            for i in range(n):
                resp = await read_response(reader)
                assert resp.status == 200 and resp.body == b"seen GET /public/p%d\n" % i
            writer.close()
            assert [s.target for s in rec.requests] == [b"/public/p%d" % i for i in range(n)]
            await still_serves(p, rec)

    run(scenario(), timeout=60)


@contextlib.contextmanager
def spawned(argv: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, terminated (then killed) and reaped on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_http(port: int, timeout: float = 15.0) -> None:
    async def answers() -> bool:
        try:
            (resp,) = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        except OSError:
            return False
        return resp.status == 200

    deadline = time.monotonic() + timeout
    while not await answers():
        assert time.monotonic() < deadline, f"nothing answers on port {port}"
        await asyncio.sleep(0.05)


async def settled_rss(proc: psutil.Process, timeout: float = 8.0) -> int:
    """The peak RSS of `proc` until it stops working (CPU time flat for 0.5 s) or `timeout`.

    (With small answers the proxy can work through the whole flood, the kernel's buffers
    absorbing the answers; what it holds per connection is set up in the first moments.)
    """
    deadline = time.monotonic() + timeout
    peak = 0
    last_cpu, flat_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        peak = max(peak, proc.memory_info().rss)
        cpu = sum(proc.cpu_times()[:2])
        if cpu != last_cpu:
            last_cpu, flat_since = cpu, time.monotonic()
        elif time.monotonic() - flat_since > 0.5:
            return peak
        await asyncio.sleep(0.02)
    return peak


MB = 1024 * 1024


def test_pipelined_floods_that_never_read_hold_bounded_memory() -> None:
    """Issue 7.2: 200 connections x 256 KB of pipelined GETs, never read: RSS grows < 64 MB."""
    backend_port, proxy_port = free_port(), free_port()
    env = {**os.environ, "PORT": str(backend_port)}
    backend = [sys.executable, str(APPS / "web.py")]
    corral = [sys.executable, "-m", "supervisor", "proxy", "--listen", f"127.0.0.1:{proxy_port}"]
    corral += ["--backend", f"127.0.0.1:{backend_port}"]

    async def flood(proc: psutil.Process) -> tuple[int, int, int]:
        await wait_http(backend_port)
        await wait_http(proxy_port)
        for _ in range(20):
            await wait_http(proxy_port)  # warm: imports, first allocations
        base = proc.memory_info().rss
        payload = pipelined(256 * 1024 // 34, b"/x")
        writers = []
        for _ in range(200):
            # A small receive window, as a client holding the proxy's resources would use:
            # the proxy's answers back up at once instead of filling megabytes of kernel
            # buffers first (which would only make the test slow).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy_port))
            _, writer = await asyncio.open_connection(sock=sock)
            writer.write(payload)  # and never read the answers
            writers.append(writer)
        peak = await settled_rss(proc)
        for writer in writers:
            writer.transport.abort()
        await wait_until(lambda: len(proc.net_connections()) < 20, what="connections closed")
        # Memory comes back (the sweeper returns free heap pages once most clients are gone).
        with contextlib.suppress(AssertionError):  # asserted below, with the figures
            await wait_until(lambda: proc.memory_info().rss - base < 16 * MB, 10, "memory")
        after = proc.memory_info().rss
        await wait_http(proxy_port)  # and it still serves
        return base, peak, after

    with spawned(backend, env=env), spawned(corral) as proxy:
        base, peak, after = asyncio.run(flood(psutil.Process(proxy.pid)))
    print(
        f"proxy RSS: {base / MB:.1f} MB before, {peak / MB:.1f} MB peak, {after / MB:.1f} MB after"
    )
    assert peak - base < 64 * MB
    assert after - base < 16 * MB  # and it comes back


# --- 5. methods: any RFC 9110 token is forwarded, on both paths ------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"FOO /public/m HTTP/1.1\r\nHost: t\r\n\r\n",  # the fast path (whole, bodiless)
        b"FOO /public/m HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",  # the parser
        b"FOO /public/m HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"\r\nfoo.bar-1 /public/m HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        b"PROPFIND /public/m HTTP/1.1\r\nHost: t\r\nDepth: 1\r\n\r\n",
    ],
)
def test_extension_methods_are_forwarded_with_their_body(
    run: Runner, request_bytes: bytes, no_internal_errors: object
) -> None:
    method = request_bytes.lstrip(b"\r\n").split(b" ", 1)[0]
    body = b"abc" if b"abc" in request_bytes else b""

    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            (resp,) = await raw_exchange(p.port, request_bytes)
            assert resp.status == 200 and resp.body == b"seen %s /public/m\n" % method
            (seen,) = rec.requests
            assert (seen.method, seen.body) == (method, body)
            await still_serves(p, rec)

    run(scenario())


def test_an_extension_method_split_across_reads_is_forwarded(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(b"FROB")
            await writer.drain()
            await wait_until(lambda: held_unparsed(p) == 4, what="the proxy to read 4 bytes")
            writer.write(b"NICATE /public/m HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
            resp = await read_response(reader)
            writer.close()
            assert resp.status == 200 and resp.body == b"seen FROBNICATE /public/m\n"
            assert [(s.method, s.body) for s in rec.requests] == [(b"FROBNICATE", b"x")]

    run(scenario())


def held_unparsed(p: Proxy) -> int:
    """Bytes the proxy keeps back before parsing (white-box: for waiting, not asserting)."""
    return sum(len(c.reader._carry) for c in p.server._ctx.clients)  # type: ignore[attr-defined]


def test_extension_methods_in_a_pipeline_keep_their_order(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            reqs = (
                b"GET /public/1 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"FOO /public/2 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
                b"BAR /public/3 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /public/4 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nyo"
            )
            resps = await raw_exchange(p.port, reqs, responses=4)
            assert [r.body for r in resps] == [
                b"seen GET /public/1\n",
                b"seen FOO /public/2\n",
                b"seen BAR /public/3\n",
                b"seen POST /public/4\n",
            ]
            assert [(s.method, s.body) for s in rec.requests] == [
                (b"GET", b""),
                (b"FOO", b"hi"),
                (b"BAR", b""),
                (b"POST", b"yo"),
            ]

    run(scenario())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"G@T /public/m HTTP/1.1\r\nHost: t\r\n\r\n", 400),  # not a token
        (b"X" * 33 + b" /public/m HTTP/1.1\r\nHost: t\r\n\r\n", 400),  # longer than 32
        (b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 405),
    ],
)
def test_what_is_not_a_forwardable_method_is_refused(
    run: Runner, request_bytes: bytes, status: int, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            (resp,) = await raw_exchange(p.port, request_bytes)
            assert resp.status == status and resp.header("Server") == "corral"
            assert rec.received == b""
            await still_serves(p, rec)

    run(scenario())


# --- 3. the connection cap ----------------------------------------------------------------------


def test_a_full_proxy_stops_accepting_and_resumes_below_the_cap(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup(max_connections=20) as (rec, p):
            # A keep-alive client from before the flood keeps being served during it.
            reader, writer = await asyncio.open_connection(p.host, p.port)
            idle = [await asyncio.open_connection(p.host, p.port) for _ in range(40)]
            ctx = p.server._ctx
            await wait_until(lambda: ctx.full, what="the proxy to stop accepting")
            for i in range(3):
                writer.write(b"GET /public/kept%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
                assert (await read_response(reader)).status == 200
            # Connections past the cap wait in the listen backlog, not accepted and dropped.
            late_r, late_w = await asyncio.open_connection(p.host, p.port)
            late_w.write(b"GET /public/late HTTP/1.1\r\nHost: t\r\n\r\n")
            assert len(ctx.clients) <= 20 + 1
            assert "corral_proxy_accept_pauses_total 1" in p.server.metrics()
            for _, w in idle:
                w.close()
            resp = await asyncio.wait_for(read_response(late_r), 5)
            assert resp.status == 200 and resp.body == b"seen GET /public/late\n"
            await wait_until(lambda: not ctx.full, what="accepting again")
            for w in (writer, late_w):
                w.close()
            await still_serves(p, rec)

    run(scenario())


def unix_get(path: Path, target: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.0 GET over the daemon's control socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: corral\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def gauge(metrics: bytes, name: str) -> float:
    for line in metrics.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


DAEMON_NOFILE = 1024


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))


@dataclasses.dataclass
class LowFdDaemon:
    """A real `corral daemon` limited to DAEMON_NOFILE descriptors (low_fd_daemon)."""

    process: subprocess.Popen[bytes]
    sock_path: Path
    log_path: Path

    def states(self) -> list[str]:
        status, body = unix_get(self.sock_path, "/v1/ps", timeout=5)
        assert status == 200, body
        return [row["state"] for row in json.loads(body)]


@contextlib.contextmanager
def low_fd_daemon(tmp_path: Path, *, client_fds: int) -> Iterator[LowFdDaemon]:
    """The daemon of tmp_path's corral.toml (two instances) once both are ready, while this
    test process may open `client_fds` descriptors for its flood. Afterwards: both instances
    stayed ready, none went unhealthy, failed or crashed, and the daemon logged no descriptor
    trouble."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < client_fds:
        pytest.skip(f"the test process needs {client_fds} descriptors; its hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sock_path = tmp_path / ".corral" / "corral.sock"
    log_path = tmp_path / "daemon.log"
    argv = [sys.executable, "-m", "supervisor", "daemon", "-f", str(tmp_path / "corral.toml")]
    with (
        open(log_path, "wb") as log_file,
        spawned(
            argv, cwd=tmp_path, stderr=log_file, preexec_fn=_low_fd_limit, start_new_session=True
        ) as process,
    ):
        daemon = LowFdDaemon(process, sock_path, log_path)
        deadline = time.monotonic() + 30
        while not (sock_path.exists() and _answers(sock_path) and daemon.states() == ["ready"] * 2):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.05)
        yield daemon
        assert daemon.states() == ["ready", "ready"]
        _, body = unix_get(sock_path, "/v1/events?n=1000")
        events = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert not [e for e in events if e["new"] in ("unhealthy", "failed", "crashed")], events
    text = log_path.read_text()
    for bad in ("Too many open files", "EMFILE", "internal error", "Traceback"):
        assert bad not in text, text[-3000:]


FLOOD = 1500  # idle connections, more than the daemon's whole descriptor limit (1024)


def test_an_fd_flood_leaves_supervision_working(tmp_path: Path) -> None:
    """Issue 7.3: more idle connections than the daemon has descriptors; nothing else breaks."""
    proxy_port = free_port()
    write_config(
        tmp_path,
        f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\n' + web_service("web", instances=2),
    )

    async def flood(daemon: LowFdDaemon) -> dict[str, float]:
        sock_path = daemon.sock_path
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        figures: dict[str, float] = {}
        conns = []
        for _ in range(FLOOD):
            try:
                conns.append(await asyncio.open_connection("127.0.0.1", proxy_port))
            except OSError:  # the listen backlog is full: the kernel refuses the rest
                break
        figures["flood"] = len(conns)
        await asyncio.sleep(0)
        status, metrics = unix_get(sock_path, "/metrics")
        assert status == 200
        figures["held"] = gauge(metrics, "corral_proxy_client_connections")
        figures["cap"] = gauge(metrics, "corral_proxy_max_connections")
        figures["daemon_fds"] = psutil.Process(daemon.process.pid).num_fds()
        assert gauge(metrics, "corral_proxy_accept_pauses_total") >= 1
        assert figures["held"] <= figures["cap"] + 16
        # During the flood: the control API answers, health checks pass (two seconds is ten
        # probe intervals), and the proxy serves the connection it already had.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert daemon.states() == ["ready", "ready"]
            writer.write(b"GET /during HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader)).status == 200
            await asyncio.sleep(0.2)
        for _, w in conns:
            w.transport.abort()
        writer.close()

        # And once the flood is gone, new connections are accepted again.
        async def served() -> bool:
            try:
                (resp,) = await raw_exchange(proxy_port, b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
            except OSError:
                return False
            return resp.status == 200

        deadline = time.monotonic() + 10
        while not await served():
            assert time.monotonic() < deadline, "the proxy does not accept after the flood"
            await asyncio.sleep(0.1)
        return figures

    with low_fd_daemon(tmp_path, client_fds=FLOOD + 200) as daemon:
        figures = asyncio.run(flood(daemon))
    print(
        f"fd flood: {figures['flood']:.0f} connections opened, the proxy held "
        f"{figures['held']:.0f} (max_connections {figures['cap']:.0f}), daemon "
        f"{figures['daemon_fds']:.0f} descriptors of {DAEMON_NOFILE}"
    )


def _answers(sock_path: Path) -> bool:
    try:
        return unix_get(sock_path, "/v1/status", timeout=2)[0] == 200
    except OSError:
        return False


# --- 4. client timeouts: header, body, send ---------------------------------------------------------


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the proxy sends until it closes the connection (which it must within `seconds`).

    A client still sending when the proxy closes may get a reset instead of the answer (its
    unread bytes make the kernel reset the connection): that counts as closed, with b"".
    """
    data = b""
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def test_a_trickled_head_is_cut_at_the_header_timeout(
    run: Runner, no_internal_errors: object
) -> None:
    # Issue 7.4 (scaled down): one header byte at a time, each well inside the idle timeout.
    async def scenario() -> None:
        async with hostile_setup(header_timeout=0.5) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            started = time.monotonic()

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError):
                    for byte in b"GET /public/slow HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 100:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.05)

            sender = asyncio.create_task(trickle())
            answer = await closed_within(reader, 5)
            sender.cancel()
            writer.close()
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")
            # Closed within 5 s (closed_within), while the trickle (5.35 s) still kept it busy:
            # the header deadline, not the idle rule. No tighter bound: the machine may be loaded.
            assert time.monotonic() - started >= 0.5
            assert rec.received == b""
            assert 'corral_proxy_client_timeouts_total{kind="header"} 1' in p.server.metrics()
            await still_serves(p, rec)

    run(scenario())


def test_a_silent_connection_is_closed_at_the_header_timeout(run: Runner) -> None:
    async def scenario() -> None:
        async with hostile_setup(header_timeout=0.3) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            assert await closed_within(reader, 5) == b""  # nothing to answer: just closed
            writer.close()
            await still_serves(p, rec)

    run(scenario())


def test_a_head_in_pieces_within_the_header_timeout_is_served(run: Runner) -> None:
    async def scenario() -> None:
        async with hostile_setup(header_timeout=1.0) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(b"GET /public/ok HTTP/1.1\r\n")
            await asyncio.sleep(0.2)  # a slow client, not a wait for anything
            writer.write(b"Host: t\r\n\r\n")
            resp = await read_response(reader)
            assert resp.status == 200 and [s.target for s in rec.requests] == [b"/public/ok"]
            writer.close()

    run(scenario())


def test_a_stalled_body_is_cut_at_the_body_timeout_and_frees_its_backend(
    run: Runner, no_internal_errors: object
) -> None:
    async def scenario() -> None:
        async with hostile_setup(body_timeout=0.5) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000000\r\n\r\nhi"
            )
            # The backend connection is held: the head and the first bytes went upstream.
            await wait_until(lambda: rec.received.endswith(b"\r\n\r\nhi"), what="body upstream")
            assert p.pool.snapshot()[0]["in_flight"] == 1
            started = time.monotonic()
            answer = await closed_within(reader, 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer
            assert 0.4 <= time.monotonic() - started < 2.0
            snap = p.pool.snapshot()[0]
            assert (snap["in_flight"], snap["failures"]) == (0, 0)  # released, not charged
            assert rec.requests == []  # the backend never got a whole request
            await still_serves(p, rec)

    run(scenario())


BIG = 64 * 1024 * 1024
_CHUNK = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
# Built once: making 64 MiB inside the backend's callback would stall the shared event loop.
BIG_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _CHUNK * (BIG // 0x10000)
    + b"0\r\n\r\n"
)


def big_chunked(seen: Seen) -> bytes | None:
    return BIG_CHUNKED if seen.target == b"/public/big" else ok(seen)


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_a_client_that_stops_reading_is_reset_at_the_send_timeout(
    run: Runner, version: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 7.4: the read timeout (shorter here) must not fire while the proxy waits for the
    # client; the client is cut by its own deadline, the backend is not charged, and the cut is
    # a reset, even for HTTP/1.0 where the connection's end would mark the body's end.
    async def scenario() -> None:
        spec = {"send_timeout": 1.5, "read_timeout": 0.5}
        async with hostile_setup(Recording(respond=big_chunked), **spec) as (rec, p):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (p.host, p.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
            writer.write(b"GET /public/big HTTP/%s\r\nHost: t\r\n\r\n" % version)
            got = len(await reader.read(100_000))
            await wait_until(lambda: p.server._ctx.client_timeouts.get("send", 0) == 1, 10, "send")
            with pytest.raises(ConnectionResetError):
                while chunk := await reader.read(1 << 20):
                    got += len(chunk)
            writer.close()
            assert got < BIG  # truncated, and never a clean end
            snap = p.pool.snapshot()[0]
            assert (snap["in_flight"], snap["failures"]) == (0, 0)
            assert 504 not in p.server._ctx.errors
            await still_serves(p, rec)

    with caplog.at_level(logging.INFO, logger="proxy"):
        run(scenario(), timeout=30)
    assert any("stopped reading" in r.getMessage() for r in caplog.records)


def test_a_backend_that_stops_taking_the_body_is_charged_at_the_read_timeout(
    run: Runner, no_internal_errors: object
) -> None:
    # The other side of "timeouts.read measures backend silence": a backend not reading the
    # request is silent too; the client, paused meanwhile, is not blamed by its body timeout.
    async def scenario() -> None:
        stop = asyncio.Event()

        async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await stop.wait()  # never reads the body

        async with running_raw_backend(deaf) as addr:
            pool = make_pool([addr])
            async with running_proxy(pool, read_timeout=0.5, body_timeout=0.3) as p:
                reader, writer = await asyncio.open_connection(p.host, p.port)
                writer.write(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
                sender = asyncio.create_task(_send_forever(writer))
                resp = await asyncio.wait_for(read_response(reader), 10)
                sender.cancel()
                writer.close()
                stop.set()
                assert resp.status == 504 and "no response" in resp.body.decode()
                assert p.pool.snapshot()[0]["failures"] == 1
                assert "body" not in p.server._ctx.client_timeouts

    run(scenario())


async def _send_forever(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(b"z" * 65536)
            await writer.drain()


# --- 5b. headers a client or a backend may not take away -------------------------------------------


def test_connection_cannot_strip_host(run: Runner, no_internal_errors: object) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            (resp,) = await raw_exchange(
                p.port,
                b"GET /public/h HTTP/1.1\r\nHost: shop.local\r\nConnection: host, X-Gone\r\n"
                b"X-Gone: 1\r\n\r\n",
            )
            assert resp.status == 200
            (seen,) = rec.requests
            assert seen.header(b"host") == [b"shop.local"] and seen.header(b"x-gone") == []
            await still_serves(p, rec)

    run(scenario())


def test_a_backend_connection_header_cannot_strip_the_framing(
    run: Runner, no_internal_errors: object
) -> None:
    def sly(seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"

    async def scenario() -> None:
        async with hostile_setup(Recording(respond=sly)) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            for _ in range(2):  # still framed: the connection stays usable
                writer.write(b"GET /public/f HTTP/1.1\r\nHost: t\r\n\r\n")
                resp = await read_response(reader)
                assert resp.header("Content-Length") == "5" and resp.body == b"hello"
            writer.close()
            assert len(rec.raw) == 1  # one backend connection, reused

    run(scenario())


def test_proxy_authorization_reaches_the_backend(run: Runner, no_internal_errors: object) -> None:
    async def scenario() -> None:
        async with hostile_setup() as (rec, p):
            await raw_exchange(
                p.port,
                b"GET /public/a HTTP/1.1\r\nHost: t\r\nProxy-Authorization: Basic eA==\r\n\r\n",
            )
            (seen,) = rec.requests
            assert seen.header(b"proxy-authorization") == [b"Basic eA=="]

    run(scenario())


# --- generated requests (hypothesis) ---------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9]( [\t\x20-\x7e\x80-\xff]*)?")
_FIELD_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[\t\x20-\x7e\x80-\xff]*")
_HOP_BY_HOP = (b"keep-alive", b"te", b"trailer", b"proxy-connection")
_VISIBLE = string.ascii_letters + string.digits + " !\"#$%&'()*+,-./:;<=>?@[]^_`{|}~"
_NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"Expect",
    b"Keep-Alive",
    b"TE",
    b"Trailer",
    b"X-Forwarded-For",
    b"Forwarded",
    b"Proxy-Authorization",
    b"Proxy-Connection",
    b"Cookie",
]
_VALUES = [
    b"t",
    b"0",
    b"3",
    b"12",
    b"-1",
    b"99999999999999999999",
    b"chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"host, x-a",
    b"content-length",
    b"websocket",
    b"100-continue",
    b"6.6.6.6",
]


@st.composite
def header_fields(draw: st.DrawFn, wild: bool) -> bytes:
    """One header line: from a well-formed, tricky set, or (wild) anything at all."""
    if not wild:
        name = draw(
            st.sampled_from(_NAMES) | st.text(TCHAR, min_size=1, max_size=12).map(str.encode)
        )
        value = draw(st.sampled_from(_VALUES) | st.text(_VISIBLE, max_size=16).map(str.encode))
        return name + b": " + value
    name = draw(
        st.one_of(
            st.sampled_from(_NAMES),
            st.text(TCHAR, min_size=1, max_size=12).map(str.encode),
            st.binary(max_size=8),
        )
    )
    value = draw(
        st.one_of(
            st.sampled_from(_VALUES),
            st.text(string.printable, max_size=16).map(str.encode),
            st.binary(max_size=12),
        )
    )
    sep = draw(st.sampled_from([b": ", b":", b" : ", b":\t"]))
    return name + sep + value


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One request as bytes (often plausible, sometimes wild), and whether it is a HEAD."""
    plausible = draw(st.booleans())
    method = draw(
        st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"FOO"])
        if plausible
        else st.one_of(
            st.sampled_from([b"GET", b"POST", b"CONNECT", b"PRI", b"get"]),
            st.text(TCHAR, min_size=1, max_size=10).map(str.encode),
            st.binary(max_size=6),
        )
    )
    target = draw(
        st.one_of(
            st.sampled_from(
                [b"/public/x", b"/public", b"/ws", b"/upload", b"/admin", b"*", b"/public/a?b=%2F"]
            ),
            st.text(string.ascii_letters + string.digits + "-._~%/?=&", max_size=20).map(
                lambda s: b"/public/" + s.encode()
            ),
            st.just(b"http://t/public/abs"),
        )
        if plausible
        else st.binary(max_size=24)
    )
    version = (
        b"HTTP/1.1"
        if plausible
        else draw(
            st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b""])
        )
    )
    eol = b"\r\n" if plausible else draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    body = draw(st.binary(max_size=40))
    lines = [b"Host: t"] if plausible else []
    if draw(st.booleans()):
        lines.append(b"X-Forwarded-For: 6.6.6.6")  # a forgery: must never reach the backend
    lines += draw(st.lists(header_fields(wild=not plausible), max_size=4))
    framing = draw(st.sampled_from(["length", "chunked", "none", "wrong"]))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "wrong":
        lines.append(b"Content-Length: %d" % (len(body) + draw(st.integers(-3, 3))))
    head = method + b" " + target + b" " + version + eol + b"".join(ln + eol for ln in lines)
    return head + eol + body, method == b"HEAD"


def check_framing(raw: bytes, heads: list[bool], *, reset: bool) -> int:
    """How many whole responses `raw` holds; fails on anything not well-framed.

    A response may end early only if the connection was reset (a cut); a body delimited by
    the connection's end must be last.
    """
    pos, n = 0, 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            assert reset, f"a response head cut off by a clean close: {raw[pos:]!r}"
            return n
        lines = raw[pos:end].split(b"\r\n")
        assert _STATUS_LINE.fullmatch(lines[0]), lines[0]
        status = int(lines[0][9:12])
        fields = []
        for line in lines[1:]:
            assert _FIELD_LINE.fullmatch(line), line
            name, _, value = line.partition(b":")
            fields.append((name.lower(), value.strip()))
        lengths = [v for k, v in fields if k == b"content-length"]
        codings = [v for k, v in fields if k == b"transfer-encoding"]
        assert not (lengths and codings) and len(lengths) <= 1, fields
        pos = end + 4
        if 100 <= status < 200:
            continue  # interim: the final response follows
        own_error = (b"server", b"corral") in fields
        head_request = heads[n] if n < len(heads) else False
        if (head_request and not own_error) or status in (204, 304):
            pass
        elif codings:
            assert codings[-1].lower().endswith(b"chunked"), codings
            while True:
                line_end = raw.find(b"\r\n", pos)
                if line_end < 0:
                    assert reset, "a chunked body cut off by a clean close"
                    return n
                size = int(raw[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    assert raw[pos : pos + 2] == b"\r\n" or (reset and len(raw) < pos + 2)
                    pos += 2
                    break
                if len(raw) < pos + size + 2:
                    assert reset, "a chunk cut off by a clean close"
                    return n
                assert raw[pos + size : pos + size + 2] == b"\r\n"
                pos += size + 2
        elif lengths:
            size = int(lengths[0])
            if len(raw) < pos + size:
                # The proxy's own answer to what it could not parse as a HEAD has a body;
                # one to a HEAD it did parse has none. Either is followed by the close.
                assert reset or (head_request and own_error and pos == len(raw)), "body cut"
                return n
            pos += size
        else:
            pos = len(raw)  # delimited by the close: nothing may follow it
        n += 1
    return n


def check_forwarded(seen: Seen) -> None:
    """What the backend got is something the proxy may forward."""
    assert re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", seen.method), seen.method
    assert seen.method != b"CONNECT"
    path = seen.target.split(b"?", 1)[0]
    assert any(path == r.encode() or path.startswith(r.encode() + b"/") for r in ROUTES), (
        seen.target
    )
    assert len(seen.header(b"host")) == 1, seen.headers
    assert seen.header(b"x-forwarded-for") == [b"127.0.0.1"]  # never the client's word
    for name in _HOP_BY_HOP:
        assert not seen.header(name), (name, seen.headers)
    assert not (seen.header(b"content-length") and seen.header(b"transfer-encoding"))


async def exercise(
    p: Proxy, rec: Recording, data: bytes, cuts: list[int], heads: list[bool]
) -> Counter[int]:
    before = len(rec.requests)
    reader, writer = await asyncio.open_connection(p.host, p.port)
    raw, reset = b"", False
    try:
        last = 0
        for cut in [*sorted(set(cuts)), len(data)]:
            writer.write(data[last:cut])
            last = cut
            await asyncio.sleep(0)
        # Until the proxy closes, or it answered everything and then stays quiet a moment.
        async with asyncio.timeout(5):
            while True:
                done = check_framing(raw, heads, reset=True) >= len(heads)
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.03 if done else 2)
                except TimeoutError:
                    break
                except ConnectionResetError:
                    reset = True
                    break
                if not chunk:
                    break
                raw += chunk
    finally:
        writer.close()
    check_framing(raw, heads, reset=reset)
    for seen in rec.requests[before:]:
        check_forwarded(seen)
    assert not rec.malformed, rec.malformed
    return Counter(int(m) for m in re.findall(rb"HTTP/1\.1 (\d\d\d) ", raw))


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_generated_requests_never_break_the_proxy() -> None:
    """Whatever the client sends: no exception escapes the proxy, every response is well
    framed, and nothing malformed, unrouted or with a forged X-Forwarded-For reaches the
    backend. 120 examples per run (a few seconds)."""
    errors = _Errors()
    statuses: Counter[int] = Counter()
    logging.getLogger("proxy").addHandler(errors)
    spec = {"header_timeout": 0.3, "body_timeout": 0.3, "max_body_size": 4096}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        setup = hostile_setup(**spec)
        rec, p = runner.run(setup.__aenter__())
        try:

            @settings(
                max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "120")),
                deadline=None,
                database=None,
                print_blob=True,
            )
            @given(
                st.lists(requests(), min_size=1, max_size=3),
                st.lists(st.integers(min_value=0, max_value=400), max_size=2),
            )
            def check(reqs: list[tuple[bytes, bool]], cuts: list[int]) -> None:
                # Only the first request may be a HEAD: behind a request whose framing was
                # wrong, where the next one starts is the proxy's reading, not the generator's.
                first, *rest = reqs
                data = first[0] + b"".join(b"GET " + r[5:] if head else r for r, head in rest)
                cuts = [c for c in cuts if c < len(data)]
                heads = [first[1]] + [False] * len(rest)
                statuses.update(runner.run(exercise(p, rec, data, cuts, heads)))
                assert not errors.records, [r.getMessage() for r in errors.records]

            check()
            runner.run(still_serves(p, rec))
        finally:
            runner.run(setup.__aexit__(None, None, None))
            logging.getLogger("proxy").removeHandler(errors)
    # The generator reaches both the backend and the proxy's own refusals.
    assert statuses[200] > 10 and statuses[400] > 10, statuses
    print("statuses:", dict(sorted(statuses.items())))


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /public/k HTTP/1.1\r\nHost: t\r\n\r\n",  # the fast path
        b"POST /public/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",  # the parser
    ],
)
def test_a_busy_keep_alive_connection_outlives_the_header_timeout(
    run: Runner, request_bytes: bytes
) -> None:
    # The deadline is per request head, not per connection.
    async def scenario() -> None:
        async with hostile_setup(header_timeout=0.3) as (rec, p):
            reader, writer = await asyncio.open_connection(p.host, p.port)
            started = time.monotonic()
            while time.monotonic() - started < 1.0:
                writer.write(request_bytes)
                assert (await read_response(reader)).status == 200
                await asyncio.sleep(0.05)  # a client between requests
            writer.close()
            assert len(rec.requests) >= 5 and len(p.server._ctx.clients) <= 1

    run(scenario())


def test_a_body_paused_by_a_slow_backend_is_not_the_clients_timeout(
    run: Runner, no_internal_errors: object
) -> None:
    # While the backend does not take the body the proxy stops reading the client; when it
    # reads again, the client's body deadline starts afresh (it did nothing wrong meanwhile).
    async def scenario() -> None:
        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await asyncio.sleep(1.0)  # a busy backend: the proxy's writes back up meanwhile
            await reader.readexactly(size)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        async with running_raw_backend(slow_reader) as addr:
            async with running_proxy(make_pool([addr]), body_timeout=0.4, read_timeout=5) as p:
                size = 8 * 1024 * 1024
                reader, writer = await asyncio.open_connection(p.host, p.port)
                writer.write(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
                writer.write(b"b" * size)
                resp = await asyncio.wait_for(read_response(reader), 10)
                writer.close()
                assert resp.status == 200 and resp.body == b"ok"
                assert p.server._ctx.client_timeouts == {}

    run(scenario())


def test_raising_max_connections_on_reload_accepts_at_once(run: Runner) -> None:
    async def scenario() -> None:
        async with hostile_setup(max_connections=5) as (rec, p):
            idle = [await asyncio.open_connection(p.host, p.port) for _ in range(8)]
            ctx = p.server._ctx
            await wait_until(lambda: ctx.full, what="the proxy to stop accepting")
            p.server.update_spec(dataclasses.replace(p.server.spec, max_connections=50))
            await still_serves(p, rec)  # a new connection is accepted without any closing
            for _, w in idle:
                w.close()

    run(scenario())
