"""Server-wide state shared by every connection: settings hoisted from the spec, counters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from config.model import ProxySpec

from .router import Router

access_log = logging.getLogger("proxy.access")

# Client connections idle this long between requests (or stalled mid-request) are closed.
CLIENT_IDLE_TIMEOUT = 75.0
# Request bytes buffered while no upstream connection is attached (queueing, connecting)
# before the client is paused; also the most a retry can replay.
PENDING_LIMIT = 256 * 1024
REPLAY_LIMIT = 64 * 1024


class Connection(Protocol):
    """What the server does with a client connection (downstream.ClientConnection)."""

    def sweep(self, now: float) -> None: ...
    def shutdown(self) -> None: ...
    def abort(self) -> None: ...


class Context:
    """What connections read on every request, kept as plain attributes for speed."""

    def __init__(self, spec: ProxySpec, router: Router) -> None:
        self.router = router
        self.clients: set[Connection] = set()
        self.stopping = False
        self.errors: dict[int, int] = {}  # responses the proxy wrote itself, by status
        self.connections_total = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.all_closed = asyncio.Event()  # set when stopping and the last client left
        # Coarse clock for activity stamps (timeouts), advanced by the server's sweeper; exact
        # time is read only where it is reported (latency).
        self.now = time.monotonic()
        self.apply(spec)

    def apply(self, spec: ProxySpec) -> None:
        """Take new timeouts / limits; existing connections see them on their next request."""
        self.spec = spec
        self.connect_timeout = spec.connect_timeout
        self.read_timeout = spec.read_timeout
        self.idle_timeout = spec.idle_timeout
        self.max_attempts = spec.retries + 1
        self.retry_idempotent = spec.retry_idempotent_errors
        self.max_body = spec.max_body_size
        self.max_header = spec.max_header_size
        self.queue_timeout = spec.queue_timeout
        self.trusted = spec.trusted_proxies
        self.eject_failures = spec.eject_failures
        self.eject_cooldown = spec.eject_cooldown
        self.access_log = spec.access_log

    def count_error(self, status: int) -> None:
        self.errors[status] = self.errors.get(status, 0) + 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in a task held here (the loop keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def client_gone(self, client: Connection) -> None:
        self.clients.discard(client)
        if self.stopping and not self.clients:
            self.all_closed.set()
