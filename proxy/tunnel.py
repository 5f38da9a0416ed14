"""Upgrades (WebSocket and any other protocol): a raw byte tunnel after the backend's 101.

Frames (and close codes) pass through untouched; half-closes travel through; the backend stays
in flight, so draining waits for the tunnel (bounded by the drain timeout).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .context import PENDING_LIMIT
from .state import PAUSE_BUFFER, ExchangeState

if TYPE_CHECKING:
    from .upstream import UpstreamConnection


class Tunnel(ExchangeState):
    """Upgrade side of an exchange."""

    def upstream_upgraded(self, conn: UpstreamConnection, extra: bytes) -> None:
        """The backend answered 101: from now on bytes are copied both ways untouched."""
        if conn is not self.conn or self.done:
            return
        if not self.upgrade or self.status != 101:
            self.out.clear()
            self.upstream_broken(conn, f"{conn.backend.addr} switched protocols unasked")
            return
        if extra:
            self.out.append(extra)
        self.flush()
        self.tunnel_open = True
        b = self.backend
        if b is not None:
            b.observe(time.monotonic() - self.started)
        client = self.client
        conn.tunnel = client.transport
        client.start_tunnel(conn)
        if self.pending:
            conn.write(b"".join(self.pending))
            self.pending.clear()
            self.pending_size = 0
            client.set_paused(PAUSE_BUFFER, False)

    def tunnel_data(self, data: bytes) -> None:
        """Client bytes sent right behind an upgrade request, before the backend's answer.

        Sent with the request if it has not gone out yet, else once the backend says 101:
        either way the backend sees them where the client put them, after the head.
        """
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT:
            self.client.set_paused(PAUSE_BUFFER, True)

    def end_tunnel(self) -> None:
        """Either side of an upgraded connection closed: close the other, release the backend."""
        if not self.tunnel_open:
            return
        self.tunnel_open = False
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if self.backend is not None:
            self.backend.release()
            self.backend = None
        self._finish(True)
