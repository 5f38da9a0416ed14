"""Config reload: compute the difference between two plans and apply only that."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import config
from config.model import Plan, ServiceSpec

from . import systemd
from .errors import SupervisorError
from .events import Event
from .service import Service

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger(__name__)

# A change in any of these means the processes must be replaced (rolling); anything else is
# applied in place (counts scale, proxy settings swap atomically, policies take effect next time).
PROCESS_FIELDS = frozenset(
    {
        "command",
        "cwd",
        "venv",
        "requirements",
        "python",
        "env",
        "port",
        "auto_port",
        "health",
        "oneshot",
    }
)


@dataclass(frozen=True, slots=True)
class PlanDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rolled: tuple[str, ...] = ()  # process-affecting change: rolling restart
    updated: tuple[str, ...] = ()  # in-place change (routing, policies)
    scaled: dict[str, int] = field(default_factory=dict)
    proxy_changed: bool = False
    needs_restart: tuple[str, ...] = ()  # daemon settings a reload cannot change

    def lines(self) -> list[str]:
        out = [f"+ {n}: new service, starting" for n in self.added]
        out += [f"- {n}: removed, draining and stopping" for n in self.removed]
        out += [f"~ {n}: changed, rolling restart" for n in self.rolled]
        out += [f"~ {n}: settings updated in place" for n in self.updated]
        out += [f"~ {n}: scaling to {c}" for n, c in self.scaled.items()]
        if self.proxy_changed:
            out.append("~ proxy: settings updated")
        out += [
            f"! {what}: changed, takes effect after a daemon restart" for what in self.needs_restart
        ]
        return out


def _changed_fields(old: ServiceSpec, new: ServiceSpec) -> set[str]:
    return {
        f.name
        for f in dataclasses.fields(ServiceSpec)
        if getattr(old, f.name) != getattr(new, f.name)
    }


def diff(old: Plan, new: Plan) -> PlanDiff:
    """Pure: what a reload from `old` to `new` must do."""
    added = tuple(n for n in new.services if n not in old.services)
    removed = tuple(n for n in old.services if n not in new.services)
    rolled: list[str] = []
    updated: list[str] = []
    scaled: dict[str, int] = {}
    for name in new.services:
        if name not in old.services:
            continue
        changed = _changed_fields(old.services[name], new.services[name])
        if "instances" in changed:
            scaled[name] = new.services[name].instances
            changed.discard("instances")
        if changed & PROCESS_FIELDS:
            rolled.append(name)
        elif changed:
            updated.append(name)
    needs_restart = []
    if old.daemon != new.daemon:
        needs_restart.append("[daemon]")
    old_listen = old.proxy.listen if old.proxy else None
    new_listen = new.proxy.listen if new.proxy else None
    if old_listen != new_listen:
        needs_restart.append("proxy.listen")
    if old.dashboard != new.dashboard:
        needs_restart.append("dashboard.listen")
    return PlanDiff(
        added=added,
        removed=removed,
        rolled=tuple(rolled),
        updated=tuple(updated),
        scaled=scaled,
        proxy_changed=old.proxy != new.proxy,
        needs_restart=tuple(needs_restart),
    )


class Reloader:
    """Applies `corral reload`, SIGHUP and watched corral.toml changes, one at a time."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()

    def reload_soon(self) -> None:
        """From a signal handler: start a reload, log (not raise) its outcome."""
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            result = await self.reload()
        except SupervisorError as exc:
            log.error("reload failed, nothing changed: %s", exc)
        else:
            for line in result["changes"]:
                log.info("reload: %s", line)

    async def reload(self) -> dict[str, list[str]]:
        async with self._lock:
            daemon = self.daemon
            if daemon.closing:
                raise SupervisorError("the daemon is shutting down; not reloading")
            systemd.notify("RELOADING=1")
            try:
                try:
                    new = config.load(daemon.plan.path)
                except config.ConfigError as exc:
                    daemon.events.emit(Event("reload", new="rejected", detail=str(exc)))
                    raise SupervisorError(f"config not reloaded, nothing changed: {exc}") from exc
                changes = diff(daemon.plan, new)
                await self._apply(new, changes)
            finally:
                systemd.notify("READY=1", f"STATUS={daemon.status_line()}")
            daemon.events.emit(Event("reload", new="applied", detail="; ".join(changes.lines())))
            return {"changes": changes.lines()}

    async def _apply(self, new: Plan, changes: PlanDiff) -> None:
        daemon = self.daemon
        old = daemon.plan
        # The proxy learns about new pools before instances become ready in them, and forgets
        # removed ones only after they drained.
        daemon.plan = dataclasses.replace(new, daemon=old.daemon)
        if new.proxy is not None and old.proxy is not None:
            daemon.traffic.configure(daemon.plan, daemon.instances())
        for name in changes.added:
            service = Service(new.services[name], daemon.ctx)
            daemon.services[name] = service
            daemon.bring_up(service)
        # Keep dependency order for everything that stays.
        order = {name: i for i, name in enumerate(new.services)}
        work = []
        for name in changes.rolled:
            work.append(self._roll(daemon.services[name], new.services[name]))
        for name in changes.updated:
            service = daemon.services[name]
            waits_on_old = service.spec.depends_on != new.services[name].depends_on
            self._update_in_place(service, new.services[name])
            if waits_on_old and service.phase in ("pending", "waiting"):
                daemon.bring_up(service)  # wait on the new dependencies instead
        for name, count in changes.scaled.items():
            if name not in changes.rolled:
                work.append(daemon.services[name].scale(count))
        for name in changes.removed:
            work.append(self._remove(name))
        results = await asyncio.gather(*work, return_exceptions=True)
        daemon.services = dict(
            sorted(daemon.services.items(), key=lambda kv: order.get(kv[0], len(order)))
        )
        if new.proxy is not None and old.proxy is not None:
            daemon.traffic.configure(daemon.plan, daemon.instances())
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, SupervisorError):
                log.error("reload step failed", exc_info=r)
        if errors:
            raise SupervisorError("reload applied with errors: " + "; ".join(errors))

    async def _roll(self, service: Service, spec: ServiceSpec) -> None:
        service.spec = spec
        service.desired = spec.instances
        if not any(inst.alive for inst in service.instances.values()):
            # Nothing is serving (failed, or still waiting): start afresh with the new settings.
            await service.reset()
            self.daemon.bring_up(service)
            return
        if not await service.prepare():
            raise SupervisorError(f"{service.name}: {service.error}")
        await service.restart(rolling=True)
        await service.scale(spec.instances)

    def _update_in_place(self, service: Service, spec: ServiceSpec) -> None:
        service.spec = spec
        for inst in service.instances.values():
            inst.update_spec(spec)

    async def _remove(self, name: str) -> None:
        service = self.daemon.services[name]
        await service.shutdown()
        del self.daemon.services[name]
