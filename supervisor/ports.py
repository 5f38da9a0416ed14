"""Ports for instances: which are free on this machine, and which the daemon has handed out.

A port counts as taken if another process holds it *or* the daemon has booked it for an
instance that hasn't bound it yet: between spawn and bind, only the book knows.
"""

from __future__ import annotations

import logging
import socket

from .errors import PortInUse

__all__ = ["PortAllocator", "PortInUse", "free_port", "is_free"]

log = logging.getLogger(__name__)

_FRESH_TRIES = 100


def is_free(host: str, port: int) -> bool:
    """Can a server bind host:port right now? Tries every address `host` resolves to."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False
    for family, type_, proto, _, addr in infos:
        with socket.socket(family, type_, proto) as sock:
            # As servers do: a port whose last connection sits in TIME_WAIT is free to them,
            # so it must be free to us. A live listener still makes bind() fail on Linux.
            # IPV6_V6ONLY is left at the system default, like a server's: "::" then also
            # covers IPv4 and is busy when an IPv4 listener holds the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (bind to port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PortAllocator:
    """The daemon's book of ports handed to instances."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._owners: dict[int, str] = {}

    def assign(self, owner: str, preferred: int | None, auto: bool) -> int:
        """Book a port for `owner`: `preferred` (must be free unless `auto`), or any free one."""
        if preferred is not None:
            booked_by = self._owners.get(preferred)
            if booked_by not in (None, owner):
                if not auto:
                    raise PortInUse(f"port {preferred} is already assigned to {booked_by}")
            elif is_free(self.host, preferred):
                return self._book(owner, preferred)
            elif not auto:
                raise PortInUse(f"port {preferred} is already in use by another process")
            else:
                log.info("%s: port %d is in use; picking another", owner, preferred)
        elif not auto:
            raise ValueError(f"{owner}: no port given and auto is off")
        return self.fresh(owner, set())

    def fresh(self, owner: str, avoid: set[int]) -> int:
        """Book any free port that isn't booked or in `avoid` (e.g. a replacement's port)."""
        for _ in range(_FRESH_TRIES):
            port = free_port(self.host)
            if port not in self._owners and port not in avoid:
                return self._book(owner, port)
        raise PortInUse(f"no free port found for {owner} after {_FRESH_TRIES} tries")

    def release(self, owner: str) -> None:
        """Drop every booking held by `owner`."""
        for port in [p for p, o in self._owners.items() if o == owner]:
            del self._owners[port]

    def owner_of(self, port: int) -> str | None:
        return self._owners.get(port)

    def _book(self, owner: str, port: int) -> int:
        self._owners[port] = owner
        return port
