"""The plan in force and the services that realise it: one owner for both.

The plan is replaced whole, never edited (it is frozen all the way down): at start, by a
reload (`apply`, through Service methods) and by `scale --save`. The registry of services
changes only here too, under one lock, so two plan changes never interleave.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import config
from config.model import Plan

from .errors import SupervisorError, TargetError, VenvError
from .instance import Instance
from .reload import PlanDiff, diff
from .service import Service, ServiceContext
from .targets import Target, resolve
from .traffic import Traffic

log = logging.getLogger(__name__)


class Registry:
    """Owns the plan and the services; the daemon asks it for changes of either."""

    def __init__(self, plan: Plan, traffic: Traffic) -> None:
        self._plan = plan
        self._traffic = traffic
        self._services: dict[str, Service] = {}
        self._ctx: ServiceContext | None = None
        self._lock = asyncio.Lock()  # one plan change at a time (reload, scale --save)

    def use(self, ctx: ServiceContext) -> None:
        """What new services get (the context's `lookup` is this registry's `get`)."""
        self._ctx = ctx

    # --- what others may read -------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def services(self) -> Mapping[str, Service]:
        return MappingProxyType(self._services)

    def get(self, name: str) -> Service | None:
        return self._services.get(name)

    def instances(self) -> list[Instance]:
        """Every incarnation of every service (a roll's two included)."""
        return [inst for service in self._services.values() for inst in service.everything()]

    def resolve(self, targets: Sequence[str]) -> list[Target]:
        """`api` → the whole service, `api.2` → one instance; unknown names raise TargetError."""
        return resolve(self._services, targets)

    def scaled_counts(self) -> dict[str, list[int]]:
        """Runtime scale counts: {service: [desired, instances in the config]}."""
        return {
            name: [s.desired, s.spec.instances]
            for name, s in self._services.items()
            if s.desired != s.spec.instances and s.spec.scale is None  # the autoscaler's own
        }

    # --- changes -----------------------------------------------------------------------------

    def populate(self, scaled: Mapping[str, list[int]]) -> None:
        """The services of the plan, at daemon start (a runtime scale outlives a restart of
        the daemon while the config's count for that service is unchanged)."""
        for name, spec in self._plan.services.items():
            desired = spec.instances
            if name in scaled and scaled[name][1] == spec.instances and spec.scale is None:
                desired = scaled[name][0]
            self._services[name] = Service(spec, self._context(), desired)

    async def apply(self, new: Plan) -> PlanDiff:
        """Move to `new`: a pure diff against the plan in force, applied through Service
        methods. The steps that failed are in the returned diff's `errors`."""
        async with self._lock:
            old = self._plan
            changes = diff(old, new, await self._outdated_venvs(new))
            # [daemon] settings need a restart of the daemon; keep the ones in force.
            self._plan = dataclasses.replace(new, daemon=old.daemon)
            # The proxy learns about new pools before instances become ready in them, and
            # forgets removed ones only after they drained.
            proxied = new.proxy is not None and old.proxy is not None
            if proxied:
                self._traffic.configure(self._plan, self.instances())
            for name in changes.added:
                service = self._services[name] = Service(new.services[name], self._context())
                service.bring_up()
            work: list[Coroutine[Any, Any, None]] = []
            for name in changes.rolled:
                work.append(self._services[name].roll_onto(new.services[name]))
            for name in changes.updated:
                self._services[name].update(new.services[name])
            for name, count in changes.scaled.items():
                if name not in changes.rolled:
                    work.append(self._services[name].scale(count))
            for name in changes.removed:
                work.append(self._remove(name))
            results = await asyncio.gather(*work, return_exceptions=True)
            # Keep dependency order for everything that stays (the same dict: lookups hold it).
            order = {name: i for i, name in enumerate(new.services)}
            reordered = sorted(self._services.items(), key=lambda kv: order.get(kv[0], len(order)))
            self._services.clear()
            self._services.update(reordered)
            if proxied:
                self._traffic.configure(self._plan, self.instances())
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if isinstance(failure, asyncio.CancelledError):
                raise failure  # shutdown interrupted the reload
            if not isinstance(failure, SupervisorError):
                log.error("reload step failed", exc_info=failure)
        return dataclasses.replace(changes, errors=tuple(str(f) for f in failures))

    async def save_counts(self, counts: Mapping[str, int]) -> None:
        """`scale --save`: write the counts into corral.toml (keeping its formatting); the
        config now says so, so they are no longer runtime overrides."""
        async with self._lock:
            for name, count in counts.items():
                await asyncio.to_thread(config.set_instances, self._plan.path, name, count)
                service = self._services[name]
                spec = dataclasses.replace(service.spec, instances=count)
                service.update(spec)
                self._plan = dataclasses.replace(
                    self._plan, services={**self._plan.services, name: spec}
                )

    def check_scalable(self, counts: Mapping[str, int]) -> None:
        for name in counts:
            if name not in self._services:
                known = ", ".join(self._services) or "none"
                raise TargetError(
                    f"scale takes service names; no service {name!r} (services: {known})"
                )
            scale = self._services[name].spec.scale
            if scale is not None:
                raise TargetError(
                    f"{name} is autoscaled ({scale.min} to {scale.max} instances by its "
                    f"requests): change scale.min / scale.max in {self._plan.path.name} and "
                    "reload instead"
                )

    def cancel_bring_ups(self) -> None:
        """No service starts from now on (shutdown)."""
        for service in self._services.values():
            service.cancel_bring_up()

    async def shutdown(self) -> None:
        """Stop every service, dependents first: an api should not lose its database while
        it is still draining."""
        for service in reversed(list(self._services.values())):
            await service.shutdown()

    def _context(self) -> ServiceContext:
        assert self._ctx is not None, "Registry.use() first"
        return self._ctx

    async def _outdated_venvs(self, new: Plan) -> set[str]:
        """Services whose running venv is not the one `new` asks for (requirements edited)."""
        outdated = set()
        for name, service in self._services.items():
            spec = new.services.get(name)
            if spec is None or not spec.venv or service.venv is None:
                continue
            try:
                wanted = await asyncio.to_thread(self._context().venvs.path_for, spec)
            except VenvError:
                wanted = None  # the interpreter is gone: the roll's build will say so
            if wanted != service.venv:
                outdated.add(name)
        return outdated

    async def _remove(self, name: str) -> None:
        await self._services[name].shutdown()
        del self._services[name]
