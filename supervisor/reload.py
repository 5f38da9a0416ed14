"""Config reload: the difference between two plans (pure), and re-reading corral.toml.

The daemon applies a difference (`Daemon.apply_plan`); nothing here writes its state."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import config
from config.model import Plan, ServiceSpec

from .errors import SupervisorError
from .events import Event

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
        # How the process is started: setrlimit, setuid/setgid, its cgroup's caps.
        "rlimits",
        "cgroup",
        "user",
        "group",
    }
)


@dataclass(frozen=True, slots=True)
class PlanDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rolled: tuple[str, ...] = ()  # process-affecting change: rolling restart
    rebuilt: tuple[str, ...] = ()  # of those, rolled because their requirements changed
    updated: tuple[str, ...] = ()  # in-place change (routing, policies)
    scaled: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # Of `updated`, autoscaled services whose `scale` changed: (min, max) now.
    autoscaled: Mapping[str, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))
    proxy_changed: bool = False
    needs_restart: tuple[str, ...] = ()  # daemon settings a reload cannot change
    errors: tuple[str, ...] = ()  # set once applied: the steps that failed

    def lines(self) -> list[str]:
        out = [f"+ {n}: new service, starting" for n in self.added]
        out += [f"- {n}: removed, draining and stopping" for n in self.removed]
        out += [
            f"~ {n}: requirements changed, new virtualenv, rolling restart"
            if n in self.rebuilt
            else f"~ {n}: changed, rolling restart"
            for n in self.rolled
        ]
        out += [
            f"~ {n}: autoscaled {self.autoscaled[n][0]}-{self.autoscaled[n][1]}, "
            "settings updated in place"
            if n in self.autoscaled
            else f"~ {n}: settings updated in place"
            for n in self.updated
        ]
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


def diff(old: Plan, new: Plan, venvs_changed: Collection[str] = ()) -> PlanDiff:
    """Pure: what a reload from `old` to `new` must do.

    `venvs_changed`: services whose venv key (interpreter + requirements contents, which
    the plans do not hold) differs from the venv they run in; they roll onto a new one.
    """
    added = tuple(n for n in new.services if n not in old.services)
    removed = tuple(n for n in old.services if n not in new.services)
    rolled: list[str] = []
    rebuilt: list[str] = []
    updated: list[str] = []
    scaled: dict[str, int] = {}
    autoscaled: dict[str, tuple[int, int]] = {}
    for name, spec in new.services.items():
        if name not in old.services:
            continue
        was = old.services[name]
        changed = _changed_fields(was, spec)
        if spec.scale is None and ("instances" in changed or was.scale is not None):
            # A fixed count, also when `scale` was just removed: an autoscaled spec says
            # instances = scale.min, which may equal the new count while more instances run.
            scaled[name] = spec.instances
        elif spec.scale is not None and "scale" in changed:
            # The autoscaler keeps the count within the new min and max (no `scaling to`:
            # what it runs is its decision, not scale.min).
            autoscaled[name] = (spec.scale.min, spec.scale.max)
        changed.discard("instances")
        if changed & PROCESS_FIELDS:
            rolled.append(name)
        elif name in venvs_changed:
            rolled.append(name)
            rebuilt.append(name)
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
    if old.metrics != new.metrics:
        needs_restart.append("metrics.listen")
    return PlanDiff(
        added=added,
        removed=removed,
        rolled=tuple(rolled),
        rebuilt=tuple(rebuilt),
        updated=tuple(updated),
        scaled=MappingProxyType(scaled),
        autoscaled=MappingProxyType(autoscaled),
        proxy_changed=old.proxy != new.proxy,
        needs_restart=tuple(needs_restart),
    )


class Reloader:
    """`corral reload`, SIGHUP and watched corral.toml changes: read, check, hand to the daemon.

    Reading and checking the file is done here; the difference is computed (by `diff`, pure)
    and applied (through Service methods) by `Daemon.apply_plan`, under the daemon's plan
    lock, so two reloads never interleave.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def reload_soon(self) -> None:
        """From a signal handler: start a reload, log (not raise) its outcome."""
        self.daemon.nursery.spawn(self._reload_logged(), "reload (SIGHUP)")

    async def _reload_logged(self) -> None:
        try:
            result = await self.reload()
        except SupervisorError as exc:
            log.error("reload failed: %s", exc)
        else:
            for line in result["changes"]:
                log.info("reload: %s", line)

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the config and apply the difference (an order of the daemon)."""
        return await self.daemon.order(self._reload(), "reload")

    async def _reload(self) -> dict[str, list[str]]:
        daemon = self.daemon
        daemon.notifier.reloading()
        try:
            try:
                new = config.load(daemon.plan.path)
            except config.ConfigError as exc:
                daemon.events.emit(Event("reload", new="rejected", detail=str(exc)))
                raise SupervisorError(f"config not reloaded, nothing changed: {exc}") from exc
            before = {name: service.desired for name, service in daemon.services.items()}
            changes = await daemon.apply_plan(new)
        finally:
            daemon.notifier.reloaded()
        for name, service in daemon.services.items():
            # A count the reload moved is a scale decision like any other (`corral events`).
            if name in before and service.desired != before[name]:
                daemon.events.emit(
                    Event(
                        "scale",
                        service=name,
                        old=str(before[name]),
                        new=str(service.desired),
                        detail="reload",
                    )
                )
        daemon.events.emit(Event("reload", new="applied", detail="; ".join(changes.lines())))
        if changes.errors:
            raise SupervisorError("reload applied with errors: " + "; ".join(changes.errors))
        return {"changes": changes.lines()}
