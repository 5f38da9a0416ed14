"""Socket activation: the listening sockets systemd (or systemd-socket-activate) hands over.

sd_listen_fds(3) without libsystemd: with LISTEN_PID = our pid, descriptors 3 ..
3+LISTEN_FDS-1 are ours, named by LISTEN_FDNAMES (colon-separated; the socket unit's
FileDescriptorName=, by default the unit's name). The proxy takes those named "proxy" (what
`corral systemd-unit --socket` writes); if none is named so, it takes them all, in order —
a hand-written socket unit without names still works. The variables are removed from our
environment and the descriptors made close-on-exec, so no instance inherits them (they are
the proxy's, and an instance holding one would keep the port open after we close it).
Only TCP listening sockets are taken: anything else (a Unix-domain socket, a datagram socket)
stops the start with an error naming the descriptor, before any service starts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from .errors import SupervisorError

log = logging.getLogger(__name__)

FIRST_FD = 3  # SD_LISTEN_FDS_START
PROXY = "proxy"
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_FAMILIES = {socket.AF_UNIX: "Unix-domain"}


@dataclass(slots=True)
class Inherited:
    """The sockets handed to this process, by name, in the order they came."""

    sockets: list[tuple[str, socket.socket]] = field(default_factory=list)

    def for_proxy(self) -> list[socket.socket]:
        """Those named "proxy"; all of them if none is."""
        named = [sock for name, sock in self.sockets if name == PROXY]
        return named or [sock for _, sock in self.sockets]

    def close(self) -> None:
        for _, sock in self.sockets:
            sock.close()
        self.sockets = []


def take(environ: MutableMapping[str, str] = os.environ) -> Inherited:
    """Adopt the descriptors passed to this process (none outside socket activation)."""
    count = fds_passed(environ)
    names = environ.get("LISTEN_FDNAMES", "").split(":") if count else []
    for var in _VARS:
        environ.pop(var, None)
    inherited = Inherited()
    for i in range(count):
        fd = FIRST_FD + i
        name = names[i] if i < len(names) and names[i] else "unknown"
        os.set_inheritable(fd, False)
        try:
            sock = socket.socket(fileno=fd)  # family and type read from the descriptor
        except OSError as exc:
            inherited.close()
            raise SupervisorError(f"socket activation: descriptor {fd} ({name}): {exc}") from exc
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            where = _address(sock)
            inherited.close()
            sock.close()
            raise SupervisorError(
                f"socket activation: descriptor {fd} ({name}, {where}) is not a listening "
                "stream socket (the proxy needs ListenStream=)"
            )
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            where = _address(sock)
            inherited.close()
            sock.close()
            raise SupervisorError(
                f"socket activation: descriptor {fd} ({name}, {where}) is a "
                f"{_FAMILIES.get(sock.family, str(sock.family))} socket; the proxy serves TCP only "
                "(ListenStream= with a port or an IP address and port)"
            )
        sock.setblocking(False)
        inherited.sockets.append((name, sock))
    if inherited.sockets:
        log.info(
            "socket activation: %s",
            ", ".join(f"{name}={_address(sock)}" for name, sock in inherited.sockets),
        )
    return inherited


def fds_passed(environ: Mapping[str, str]) -> int:
    """LISTEN_FDS, if LISTEN_PID says it is meant for this process."""
    pid, fds = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    if not (pid.isdigit() and fds.isdigit()) or int(pid) != os.getpid():
        return 0  # not for us: a parent's, inherited through a shell
    return int(fds)


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        host, port = str(name[0]), int(name[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name) or "unnamed"
