"""Upgrades (WebSocket and any other protocol): a raw byte tunnel after the backend's 101.

Frames (and close codes) pass through untouched; half-closes travel through; the backend stays
in flight until the tunnel closes, so draining waits for it (bounded by the drain timeout).
Both connections copy bytes straight to the other side's transport; this object owns the
half-close state they share.
"""

from __future__ import annotations

import asyncio


class Tunnel:
    """The two transports of an upgraded connection."""

    __slots__ = ("backend", "backend_eof", "client", "client_eof")

    def __init__(self, client: asyncio.Transport, backend: asyncio.Transport) -> None:
        self.client = client
        self.backend = backend
        self.client_eof = False  # the client shut down its sending side
        self.backend_eof = False

    def client_sent_eof(self) -> bool:
        """Pass the client's half-close on; False when both directions are done (close)."""
        if self.backend_eof or not self.backend.can_write_eof():
            return False
        self.client_eof = True
        self.backend.write_eof()
        return True

    def backend_sent_eof(self) -> bool:
        """Pass the backend's half-close on; False when both directions are done (close)."""
        if self.client_eof or not self.client.can_write_eof():
            return False
        self.backend_eof = True
        self.client.write_eof()
        return True
