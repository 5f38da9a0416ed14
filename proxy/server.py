"""The proxy server: listening sockets, the periodic sweeper, graceful stop, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from config.model import ProxySpec

from . import metrics
from .context import Context
from .downstream import ClientConnection
from .listener import Listener
from .memory import Trimmer
from .router import Router

log = logging.getLogger(__name__)

# At stop, how long idle keep-alive connections stay open for a request already on its way.
LAST_CALL = 0.25


class ProxyServer:
    """HTTP/1.1 reverse proxy in front of the pools a `Router` names."""

    def __init__(self, spec: ProxySpec, router: Router) -> None:
        self._spec = spec
        self._router = router
        self._ctx = ctx = Context(spec, router)
        self._listener = Listener(lambda: ClientConnection(ctx))
        ctx.accept = self._listener.accept
        self._sweeper: asyncio.Task[None] | None = None
        if spec.workers > 1:
            log.warning("proxy workers = %d: only one worker is implemented; using 1", spec.workers)

    @property
    def spec(self) -> ProxySpec:
        """The settings in force (the last `update_spec`)."""
        return self._spec

    async def start(self, inherited: list[socket.socket] | None = None) -> list[tuple[str, int]]:
        """Bind every listen address, or serve the `inherited` listening sockets (socket
        activation) instead; returns the (host, port) pairs served (port 0 resolved)."""
        if inherited:
            addresses = await self._listener.adopt(inherited)
        else:
            addresses = await self._listener.open(self._spec.listen)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="proxy:sweeper")
        log.info(
            "proxy listening on %s (max_connections %d)",
            ", ".join(f"{h}:{p}" for h, p in addresses),
            self._ctx.max_connections,
        )
        return addresses

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests under way finish (up to `grace`), then close all."""
        ctx = self._ctx
        ctx.stopping = True
        await self._listener.close()
        for client in list(ctx.clients):
            client.last_request()
        if ctx.clients and grace > 0:
            # A request already on its way over an idle keep-alive connection is answered
            # (with Connection: close) if it arrives within this window; closing the idle
            # connections at once would reset it unanswered.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(grace, LAST_CALL)):
                    await ctx.all_closed.wait()
        for client in list(ctx.clients):
            client.shutdown()
        if ctx.clients:
            try:
                async with asyncio.timeout(grace):
                    await ctx.all_closed.wait()
            except TimeoutError:
                log.warning(
                    "proxy: %d connections still open after %.1fs; closing them",
                    len(ctx.clients),
                    grace,
                )
                for client in list(ctx.clients):
                    client.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for task in list(ctx.tasks):
            task.cancel()
        if ctx.tasks:
            await asyncio.gather(*ctx.tasks, return_exceptions=True)
        for pool in self._router.pools():
            pool.close_idle()

    def update_spec(self, spec: ProxySpec) -> None:
        """Apply new timeouts, limits and retry settings at once (next request on).

        `listen` and `workers` changes need `stop()` + a new server: a warning says so.
        """
        if spec.listen != self._spec.listen or spec.workers != self._spec.workers:
            log.warning("proxy listen/workers changed: takes effect when the proxy restarts")
        self._spec = spec
        self._ctx.apply(spec)

    def metrics(self) -> str:
        """Prometheus text for per-backend and per-route counters."""
        return metrics.render(self._ctx, self._router)

    async def _sweep(self) -> None:
        # One periodic pass instead of a timer per request: read timeouts (504), client
        # deadlines (header, body, send), idle keep-alive connections both ways.
        ctx = self._ctx
        trimmer = Trimmer()
        while True:
            timeouts = (ctx.read_timeout, ctx.header_timeout, ctx.body_timeout, ctx.send_timeout)
            await asyncio.sleep(
                max(0.02, min(1.0, ctx.idle_timeout / 2, *(t / 5 for t in timeouts)))
            )
            ctx.now = now = time.monotonic()
            for pool in self._router.pools():
                pool.sweep(now - ctx.idle_timeout)
            for client in list(ctx.clients):
                client.sweep(now)
            trimmer.observe(len(ctx.clients))
