"""`corral proxy`: the proxy alone, in front of a static list of backends."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from config.model import Balance, ProxySpec, RouteSpec

from .pool import Pool
from .router import Router
from .server import ProxyServer

log = logging.getLogger(__name__)


async def run_standalone(
    listen: list[tuple[str, int]],
    backends: list[tuple[str, int]],
    balance: Balance = Balance.ROUND_ROBIN,
    *,
    shutdown: asyncio.Event,
    spec: ProxySpec | None = None,
    started: Callable[[list[tuple[str, int]]], None] | None = None,
    grace: float = 10.0,
) -> None:
    """Serve "/" from `backends` (all ready) on `listen` until `shutdown` is set.

    `spec` supplies timeouts and limits (its `listen` is replaced by `listen`); `started`
    receives the bound addresses, which is how a caller learns the port chosen for port 0.
    """
    if not listen:
        raise ValueError("at least one listen address is required")
    if not backends:
        raise ValueError("at least one backend is required")
    spec = dataclasses.replace(spec or ProxySpec(), listen=tuple(listen))
    pool = Pool("default", balance)
    for host, port in backends:
        key = f"{host}:{port}"
        pool.add(key, host, port)
        pool.set_ready(key, True)
    router = Router()
    router.set_routes([(RouteSpec(path="/"), pool)])
    server = ProxyServer(spec, router)
    addresses = await server.start()
    log.info(
        "proxying %s → %s (%s)",
        ", ".join(f"{h}:{p}" for h, p in addresses),
        ", ".join(f"{h}:{p}" for h, p in backends),
        balance.value,
    )
    if started is not None:
        started(addresses)
    try:
        await shutdown.wait()
    finally:
        await server.stop(grace)
