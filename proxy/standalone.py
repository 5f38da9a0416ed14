"""`corral proxy`: the proxy alone, in front of fixed backends or DNS-discovered ones."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from config.entry import EntryRoute, EntrySpec
from config.model import Balance, ProxySpec

from .discovery import DnsDiscovery, Resolver, resolve
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
    backend_dns: list[tuple[str, int]] | None = None,
    resolve_interval: float = 2.0,
) -> None:
    """Serve "/" from `backends` (all ready) and `backend_dns` names on `listen` until `shutdown`.

    `spec` supplies timeouts and limits (its `listen` is replaced by `listen`); `started`
    receives the bound addresses, which is how a caller learns the port chosen for port 0.
    """
    if not listen:
        raise ValueError("at least one listen address is required")
    if not backends and not backend_dns:
        raise ValueError("at least one backend is required")
    route = EntryRoute(
        name="default",
        balance=balance,
        backends=tuple(backends),
        backend_dns=tuple(backend_dns or ()),
        resolve_interval=resolve_interval,
    )
    entry = EntrySpec(
        proxy=dataclasses.replace(spec or ProxySpec(), listen=tuple(listen)), routes=(route,)
    )
    await run_entry(entry, shutdown=shutdown, started=started, grace=grace)


async def run_entry(
    entry: EntrySpec,
    *,
    shutdown: asyncio.Event,
    started: Callable[[list[tuple[str, int]]], None] | None = None,
    grace: float = 10.0,
    resolver: Resolver = resolve,
) -> None:
    """Serve every route of `entry` until `shutdown` is set; DNS names are re-resolved meanwhile."""
    router = Router()
    discoveries: list[DnsDiscovery] = []
    table = []
    for route in entry.routes:
        pool = Pool(route.name, route.balance, route.hash_key)
        for host, port in route.backends:
            key = f"{host}:{port}"
            pool.add(key, host, port)
            pool.set_ready(key, True)
        for host, port in route.backend_dns:
            discoveries.append(
                DnsDiscovery(
                    pool,
                    host,
                    port,
                    interval=route.resolve_interval,
                    drain_timeout=route.drain_timeout,
                    connect_timeout=entry.proxy.connect_timeout,
                    resolver=resolver,
                )
            )
        table.append((route.route, pool))
    router.set_routes(table)
    server = ProxyServer(entry.proxy, router)
    addresses = await server.start()
    for route in entry.routes:
        targets = [f"{h}:{p}" for h, p in route.backends]
        targets += [f"dns {h}:{p}" for h, p in route.backend_dns]
        log.info(
            "route %s%s → %s (%s)",
            route.route.host or "*",
            route.route.path,
            ", ".join(targets),
            route.balance.value,
        )
    if started is not None:
        started(addresses)
    try:
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(discovery.run(), name=f"discovery:{discovery.name}")
                for discovery in discoveries
            ]
            await shutdown.wait()
            # Discovery stops first: a member that leaves during shutdown needs no drain.
            for task in running:
                task.cancel()
    finally:
        await server.stop(grace)
