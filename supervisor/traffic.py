"""Feeds instance readiness into the proxy's pools: the one place supervisor meets proxy.

The proxy knows nothing about processes; it is told "backend ready / draining / gone" here.
For an autoscaled service it is also where the pool's demand is read (`demand`) and where a
request held at zero reaches the autoscaler (`on_demand`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from config.model import Plan, ProxySpec, ServiceSpec
from proxy.pool import Pool, WhenEmpty
from proxy.router import Router

from .autoscaler import Demand
from .errors import SupervisorError
from .instance import FINAL, HOST, Instance, State

if TYPE_CHECKING:
    from proxy.server import ProxyServer

log = logging.getLogger(__name__)

# Once an instance has left these states it gets no new traffic until it is ready again.
_GONE = frozenset({State.CRASHED, State.BACKOFF, State.FAILED, State.STOPPED, State.COMPLETED})
# Requests one autoscaled pool may hold at once (each is a client connection, itself bounded
# by [proxy] max_connections); more get 503 at once.
MAX_HELD = 1000


class Traffic:
    """Owns the router, one pool per routed service, and the proxy server."""

    def __init__(self) -> None:
        self.router = Router()
        self.pools: dict[str, Pool] = {}
        self._routed: dict[str, ServiceSpec] = {}
        self.server: ProxyServer | None = None
        self.addresses: list[tuple[str, int]] = []
        self._members: dict[str, set[str]] = {}  # service → pool keys currently added
        self._alive: dict[str, set[str]] = {}  # service → instances not stopped/failed/done
        self._autoscaled: set[str] = set()
        self.on_demand: Callable[[str], None] | None = None  # the autoscaler's `activate`
        self._closing = False  # the daemon is shutting down: no pool holds or queues again

    def configure(self, plan: Plan, instances: Iterable[Instance] = ()) -> None:
        """Create/reuse pools for routed services and swap routes atomically (reload-safe).

        `instances` are the ones running now: a service that just gained a route gets its
        ready instances in the new pool at once (no state change would add them later).
        """
        routed = {s.name: s for s in plan.services.values() if s.route is not None and s.has_port}
        for name, spec in routed.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = Pool(name, spec.balance, spec.hash_key)
            else:
                pool.reconfigure(spec.balance, spec.hash_key)
            self._autoscale(pool, spec)
        for name in set(self.pools) - set(routed):
            del self.pools[name]
            self._members.pop(name, None)
            self._autoscaled.discard(name)
        self._routed = routed
        routes = [(spec.route, self.pools[name]) for name, spec in routed.items() if spec.route]
        self.router.set_routes(routes)
        if self.server is not None and plan.proxy is not None:
            self.server.update_spec(plan.proxy)
        for inst in instances:
            if inst.routable and inst.spec.name in self.pools:
                self._join(inst)

    def _autoscale(self, pool: Pool, spec: ServiceSpec) -> None:
        scale = spec.scale
        if scale is None:
            if spec.name in self._autoscaled:
                self._autoscaled.discard(spec.name)
                pool.autoscale(enabled=False)
            return
        self._autoscaled.add(spec.name)
        name = spec.name
        pool.autoscale(
            limit=scale.concurrency,
            hold_timeout=scale.cold_start_timeout,
            max_held=MAX_HELD,
            cold_start_header=scale.cold_start_header,
            on_demand=lambda: self._demanded(name),
        )
        if pool.when_empty is not WhenEmpty.FAIL and not self._closing:
            pool.set_when_empty(WhenEmpty.HOLD)

    def _demanded(self, name: str) -> None:
        if self.on_demand is not None:
            self.on_demand(name)

    def demand(self, service: str) -> Demand | None:
        """An autoscaled service's requests, as its pool counts them (None: no such pool)."""
        pool = self.pools.get(service)
        load = pool.load if pool is not None else None
        if pool is None or load is None:
            return None
        held = pool.queued
        return Demand(
            in_flight=max(0, load.count - held),
            held=held,
            busy=load.busy_at(time.monotonic()),
            idle_since=load.idle_since if load.count == 0 else None,
        )

    def set_holding(self, service: str, holding: bool, reason: str = "") -> None:
        """An autoscaled service can start instances on demand (hold requests at zero), or
        cannot (stopped by an order: answer 503 at once, saying why)."""
        pool = self.pools.get(service)
        if pool is None or service not in self._autoscaled or self._closing:
            return
        if holding and pool.when_empty is not WhenEmpty.HOLD:
            pool.set_when_empty(WhenEmpty.HOLD)
        elif not holding and pool.when_empty is not WhenEmpty.FAIL:
            pool.set_when_empty(WhenEmpty.FAIL, reason)

    def refuse_held(self, service: str, reason: str) -> None:
        """The instance an autoscaled service's held requests wait for cannot come: answer
        them now (503, saying why); the next requests are held again."""
        pool = self.pools.get(service)
        if pool is not None and service in self._autoscaled:
            pool.refuse_waiting(reason)

    async def start(
        self, spec: ProxySpec, inherited: list[socket.socket] | None = None
    ) -> list[tuple[str, int]]:
        """Start the proxy on `spec.listen`, or on the sockets systemd handed over."""
        from proxy.server import ProxyServer

        server = ProxyServer(spec, self.router)
        try:
            self.addresses = await server.start(inherited)
        except OSError as exc:
            where = ", ".join(f"{h}:{p}" for h, p in spec.listen)
            raise SupervisorError(f"proxy cannot listen on {where}: {exc.strerror or exc}") from exc
        self.server = server  # proxy.server logs the addresses it listens on
        return self.addresses

    async def stop(self, grace: float) -> None:
        """Stop the proxy: requests held or queued for a backend are answered 503 now (no
        instance will come for them), those under way get up to `grace` to finish."""
        self._closing = True
        for pool in self.pools.values():
            pool.set_when_empty(WhenEmpty.FAIL, "the daemon is shutting down")
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    def state_changed(self, inst: Instance, old: State, new: State) -> None:
        alive = self._alive.setdefault(inst.spec.name, set())
        if new in FINAL:
            alive.discard(inst.key)
        else:
            alive.add(inst.key)
        pool = self.pools.get(inst.spec.name)
        if pool is None or inst.port is None:
            return
        self._follow(pool, inst, new, alive)
        members = self._members.setdefault(inst.spec.name, set())
        if new is State.READY:
            self._join(inst)
        elif new in (State.UNHEALTHY, State.FROZEN) and inst.key in members:
            pool.set_ready(inst.key, False)
        elif new in _GONE and inst.key in members:
            pool.remove(inst.key)
            members.discard(inst.key)

    def _follow(self, pool: Pool, inst: Instance, new: State, alive: set[str]) -> None:
        """What `pool` does while empty, after `inst` went to `new`."""
        if self._closing:
            return  # shutting down: it answers 503 when nothing can take a request (stop)
        if inst.spec.name in self._autoscaled:
            # At zero the autoscaler starts one on demand: its pool holds, unless the service
            # was stopped by an order (set_holding); one starting (`corral start`) is awaited.
            if new is State.STARTING:
                pool.set_when_empty(WhenEmpty.HOLD)
        # With no instance left that could come back on its own, waiting helps nobody.
        elif new is State.STARTING:
            pool.set_when_empty(WhenEmpty.QUEUE)
        elif new in FINAL and not alive:
            detail = f" ({inst.detail})" if inst.detail else ""
            pool.set_when_empty(WhenEmpty.FAIL, f"{inst.name} is {new.value}{detail}")

    def service_failed(self, name: str, reason: str) -> None:
        """`name` cannot run (its venv or a dependency failed): its pool answers 503 at once."""
        pool = self.pools.get(name)
        if pool is not None:
            pool.set_when_empty(WhenEmpty.FAIL, f"service {name!r} failed: {reason}")

    def _join(self, inst: Instance) -> None:
        pool = self.pools[inst.spec.name]
        members = self._members.setdefault(inst.spec.name, set())
        assert inst.port is not None
        if inst.key not in members:
            pool.add(inst.key, HOST, inst.port, inst.spec.weight(inst.index - 1))
            members.add(inst.key)
        pool.set_ready(inst.key, True)

    async def drain(self, inst: Instance) -> None:
        pool = self.pools.get(inst.spec.name)
        members = self._members.get(inst.spec.name, set())
        if pool is not None and inst.key in members:
            await pool.drain(inst.key, inst.spec.drain_timeout)
            members.discard(inst.key)

    def metrics(self) -> str:
        return self.server.metrics() if self.server is not None else ""

    def describe(self) -> dict[str, object]:
        return {
            "listen": [f"{h}:{p}" for h, p in self.addresses],
            "pools": {name: pool.snapshot() for name, pool in self.pools.items()},
        }
