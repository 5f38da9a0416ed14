"""The state of one exchange, shared by the pieces that drive it (see exchange.py).

Class attributes are the defaults, so creating an exchange sets only what differs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import errors
from .framing import NO_BODY

if TYPE_CHECKING:
    from .downstream import ClientConnection
    from .pool import Backend
    from .router import Route
    from .upstream import UpstreamConnection

# Reasons the client's reading is paused (a bit each).
PAUSE_BUFFER, PAUSE_UPSTREAM, PAUSE_PIPELINE = 1, 2, 4


class ExchangeState:
    """Fields of one proxied request and its response, and the steps the parts call."""

    # request (filled by the client connection's parser callbacks)
    method = b""
    target = b""
    http10 = False
    keep_alive = True
    host: bytes | None = None
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    connection: bytes | None = None
    upgrade_value: bytes | None = None
    xff: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    forwarded: bytes | None = None
    head = b""
    route: Route | None = None
    chunked_in = False
    upgrade = False
    idempotent = True
    error: errors.ProxyError | None = None
    body_seen = 0
    req_done = False
    pending_size = 0
    replay: list[bytes] | None = None
    replay_size = 0
    # dispatch
    backend: Backend | None = None
    conn: UpstreamConnection | None = None
    task: asyncio.Task[None] | None = None
    attempts = 0
    stale_retries = 0
    fresh_only = False
    reused = False
    sent = False
    started = 0.0
    last_upstream = 0.0
    got_response_bytes = False
    tunnel_open = False
    # response
    status = 0
    reason = b""
    resp_cl = False
    resp_te: bytes | None = None
    resp_chunked = False  # the backend's body is chunked (else delimited by length or close)
    resp_conn: bytes | None = None
    resp_upgrade: bytes | None = None
    head_done = False
    resp_started = False
    mode = NO_BODY
    close_after = False
    done = False
    bytes_out = 0

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.lines: list[bytes] = []
        self.pending: list[bytes] = []
        self.tried: list[Backend] = []
        self.resp_lines: list[bytes] = []
        self.out: list[bytes] = []

    # Implemented by the parts of Exchange; declared here so each part can call the others.
    def flush(self) -> None:
        raise NotImplementedError

    def answer(self, status: int, detail: str) -> None:
        raise NotImplementedError

    def upstream_broken(self, conn: UpstreamConnection, why: str) -> None:
        raise NotImplementedError

    def _complete(self, *, reusable: bool) -> None:
        raise NotImplementedError

    def _finish(self, close: bool, *, abort: bool = False) -> None:
        raise NotImplementedError
