"""DNS discovery: a pool's members are the addresses a name resolves to, re-resolved on an interval.

This is how the entry proxy of a container stack finds the replicas of a service: Docker's
embedded DNS answers `api` (compose) or `tasks.api` (Swarm) with one address per running
replica. A new address is admitted like a starting instance: added to the pool, made ready once
its port accepts a connection. An address that disappears is drained like a stopping instance:
no new requests, in-flight ones may finish for `drain_timeout`. A failed lookup changes nothing,
so a DNS hiccup never empties a pool (dead members are ejected by connection failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

from .pool import Pool

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every IPv4 address of `host` (the system resolver), sorted; IPv6 only if it has none.

    One family at a time: asking for both makes getaddrinfo wait for the AAAA answer too, and
    Docker's embedded DNS forwards AAAA queries for its own names upstream, where (on an
    isolated network) they time out, so every lookup took seconds and the pool went stale.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except socket.gaierror:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET6, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def changes(members: Iterable[str], found: Iterable[str]) -> tuple[list[str], list[str]]:
    """(addresses to add, addresses to drain) to go from `members` to `found`, sorted."""
    now, then = set(found), set(members)
    return sorted(now - then), sorted(then - now)


class DnsDiscovery:
    """Keeps `pool`'s members equal to the addresses of `host`, each serving on `port`."""

    def __init__(
        self,
        pool: Pool,
        host: str,
        port: int,
        *,
        interval: float = 2.0,
        drain_timeout: float = 30.0,
        connect_timeout: float = 2.0,
        resolver: Resolver = resolve,
    ) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.interval = interval
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self._resolver = resolver
        self._members: dict[str, str] = {}  # address → pool key
        self._failing = False

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def members(self) -> list[str]:
        """Addresses currently in the pool (admitted or waiting for their port), sorted."""
        return sorted(self._members)

    async def run(self) -> None:
        """Resolve, reconcile, sleep `interval`; until cancelled (which cancels drains too)."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                await self.refresh(tasks)
                await asyncio.sleep(self.interval)

    async def refresh(self, tasks: asyncio.TaskGroup) -> None:
        """One lookup and the pool changes it implies; admissions and drains run in `tasks`."""
        try:
            async with asyncio.timeout(max(self.interval, 1.0) * 5):
                found = await self._resolver(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            if not self._failing:
                log.warning(
                    "discovery %s: lookup failed (%s); keeping %d members",
                    self.name,
                    str(exc) or "no answer in time",
                    len(self._members),
                )
            self._failing = True
            return
        if self._failing:
            log.info("discovery %s: lookups work again", self.name)
            self._failing = False
        added, gone = changes(self._members, found)
        for address in added:
            key = self._key(address)
            self._members[address] = key
            self.pool.add(key, address, self.port)
            log.info("discovery %s: %s appeared", self.name, key)
            tasks.create_task(self._admit(address, key), name=f"admit:{key}")
        for address in gone:
            key = self._members.pop(address)
            log.info("discovery %s: %s went away; draining", self.name, key)
            tasks.create_task(self.pool.drain(key, self.drain_timeout), name=f"drain:{key}")

    def _key(self, address: str) -> str:
        return f"[{address}]:{self.port}" if ":" in address else f"{address}:{self.port}"

    async def _admit(self, address: str, key: str) -> None:
        # Compose's DNS lists a container as soon as it runs, before its server listens; the
        # port accepting a connection is the readiness signal Corral uses without a health check.
        delay = 0.05
        while self._members.get(address) == key:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, writer = await asyncio.open_connection(address, self.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.interval)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if self._members.get(address) == key:
                self.pool.set_ready(key, True)
                log.info("discovery %s: %s ready", self.name, key)
            return
