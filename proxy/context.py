"""Server-wide state shared by every connection: settings hoisted from the spec, counters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from config.model import ProxySpec

from .limits import default_max_connections, nofile_limit, reserve_for
from .router import Router

log = logging.getLogger(__name__)

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
    def last_request(self) -> None: ...
    def shutdown(self) -> None: ...
    def abort(self) -> None: ...


class Context:
    """What connections read on every request, kept as plain attributes for speed."""

    def __init__(self, spec: ProxySpec, router: Router) -> None:
        self.router = router
        self.clients: set[Connection] = set()
        self.upstream_open = 0  # backend connections open or being opened
        self.full = False  # at max_connections: not accepting (see listener.py)
        self.accept_pauses = 0
        self.accept: Callable[[bool], None] = lambda on: None  # the listener's switch
        self.stopping = False
        self.errors: dict[int, int] = {}  # responses the proxy wrote itself, by status
        self.client_timeouts: dict[str, int] = {}  # connections ended by a client deadline
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
        self.header_timeout = spec.header_timeout
        self.body_timeout = spec.body_timeout
        self.send_timeout = spec.send_timeout
        self.max_attempts = spec.retries + 1
        self.retry_idempotent = spec.retry_idempotent_errors
        self.max_body = spec.max_body_size
        self.max_header = spec.max_header_size
        self.queue_timeout = spec.queue_timeout
        self.trusted = spec.trusted_proxies
        self.eject_failures = spec.eject_failures
        self.eject_cooldown = spec.eject_cooldown
        self.access_log = spec.access_log
        limit = nofile_limit()
        self.max_connections = spec.max_connections or default_max_connections(limit)
        self.fd_budget = 2 * self.max_connections  # client and backend connections together
        if 2 * self.max_connections + reserve_for(limit) // 2 > limit:
            log.warning(
                "proxy max_connections %d may need %d file descriptors; RLIMIT_NOFILE is %d",
                self.max_connections,
                2 * self.max_connections,
                limit,
            )
        # Accepting resumes a little below the cap, so that a full proxy does not flip
        # between accepting and not for every connection that closes.
        self.resume_at = self.max_connections - max(1, self.max_connections // 20)
        if self.full and len(self.clients) <= self.resume_at:  # a reload raised the cap
            self.full = False
            self.accept(True)

    def count_client_timeout(self, kind: str) -> None:
        self.client_timeouts[kind] = self.client_timeouts.get(kind, 0) + 1

    def count_error(self, status: int) -> None:
        self.errors[status] = self.errors.get(status, 0) + 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in a task held here (the loop keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def client_added(self, client: Connection) -> None:
        self.clients.add(client)
        self.connections_total += 1
        if len(self.clients) >= self.max_connections and not self.full and not self.stopping:
            self.full = True
            self.accept_pauses += 1
            log.warning(
                "proxy: %d client connections (max_connections): not accepting more until "
                "some close",
                len(self.clients),
            )
            self.accept(False)

    def client_gone(self, client: Connection) -> None:
        self.clients.discard(client)
        if self.full and len(self.clients) <= self.resume_at:
            self.full = False
            log.info("proxy: %d client connections: accepting again", len(self.clients))
            if not self.stopping:
                self.accept(True)
        if self.stopping and not self.clients:
            self.all_closed.set()

    def shed_idle(self) -> None:
        """Close the longest-idle keep-alive backend connection, if there is one."""
        oldest = None
        for pool in self.router.pools():
            for b in pool.backends():
                if b.idle and (oldest is None or b.idle[0].idle_since < oldest.idle[0].idle_since):
                    oldest = b
        if oldest is not None:
            oldest.close_oldest_idle()

    def room_for_upstream(self) -> bool:
        """Whether one more backend connection fits the budget (clients count once each)."""
        return len(self.clients) + self.upstream_open < self.fd_budget
