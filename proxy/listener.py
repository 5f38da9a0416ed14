"""The listening sockets, and pausing them when the proxy holds all the connections it may.

Like nginx at worker_connections, a full proxy stops accepting instead of accepting and
dropping: the kernel keeps completing handshakes into the listen backlog, and those clients
are served as soon as connections close. The proxy owns each listening socket; the event
loop serves a duplicate of it, so pausing closes only the duplicate (the port stays bound and
its backlog keeps filling) and resuming serves a new one. Closing for good serves what is
still in the backlog first, so a graceful stop resets no client that was already connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

BACKLOG = 2048
RETRY_DELAY = 0.5  # seconds between attempts to resume accepting


class Listener:
    """Listening sockets served by the event loop, with accepting paused and resumed on demand."""

    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self._factory = factory
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.Server] = []
        self._accepting = False  # what was asked for last
        self._resuming: asyncio.Task[None] | None = None

    async def open(self, addresses: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
        """Bind every address and start accepting; returns the bound (host, port) pairs."""
        bound: list[tuple[str, int]] = []
        try:
            for host, port in addresses:
                for sock in _bind(host, port):
                    self._sockets.append(sock)
                    name = sock.getsockname()
                    bound.append((str(name[0]), int(name[1])))
            self._accepting = True
            await self._serve()
        except BaseException:
            await self.close()
            raise
        return bound

    async def adopt(self, sockets: list[socket.socket]) -> list[tuple[str, int]]:
        """Serve listening sockets someone else bound (socket activation); their addresses."""
        self._sockets = list(sockets)
        try:
            self._accepting = True
            await self._serve()
        except BaseException:
            await self.close()
            raise
        names = [sock.getsockname() for sock in self._sockets]
        return [(str(name[0]), int(name[1])) for name in names]

    def accept(self, on: bool) -> None:
        """Start (True) or stop (False) accepting new connections."""
        if on == self._accepting or not self._sockets:
            return
        self._accepting = on
        if on:
            if self._resuming is None:
                self._resuming = asyncio.get_running_loop().create_task(self._resume())
        else:
            for server in self._servers:
                server.close()
            self._servers = []

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def close(self) -> None:
        """Stop accepting for good and release the ports."""
        self._accepting = False
        if self._resuming is not None:
            self._resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resuming
            self._resuming = None
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        # The kernel completed these handshakes and the clients have sent their requests;
        # closing the socket would reset them unanswered. Take them first (nothing is awaited
        # between the last accept and the close), then serve them like any other connection.
        taken = [conn for sock in self._sockets for conn in _take_backlog(sock)]
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        loop = asyncio.get_running_loop()
        for conn in taken:
            try:
                await loop.connect_accepted_socket(self._factory, conn)
            except OSError as exc:
                log.warning("proxy: cannot serve a connection from the backlog: %s", exc)
                conn.close()

    async def _resume(self) -> None:
        try:
            while self._accepting and not self._servers:
                try:
                    await self._serve()
                except OSError as exc:  # e.g. no descriptor left for the duplicate
                    for server in self._servers:
                        server.close()
                    self._servers = []
                    log.warning("proxy: cannot accept again yet: %s; retrying", exc)
                    await asyncio.sleep(RETRY_DELAY)
        finally:
            self._resuming = None
        if not self._accepting:  # paused again while the servers were being set up
            for server in self._servers:
                server.close()
            self._servers = []

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            server = await loop.create_server(self._factory, sock=sock.dup(), backlog=BACKLOG)
            self._servers.append(server)


def _take_backlog(sock: socket.socket) -> list[socket.socket]:
    """Accept what waits in a listening socket's backlog, without blocking."""
    taken: list[socket.socket] = []
    while len(taken) < BACKLOG:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:  # out of descriptors: the rest are reset when the socket closes
            log.warning("proxy: cannot take the listen backlog at stop: %s", exc)
            break
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        taken.append(conn)
    return taken


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (as loop.create_server binds)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[object, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
