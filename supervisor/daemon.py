"""The daemon: owns every service, the proxy and the control socket for one corral.toml."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import psutil

import config
from config.model import DependCondition, Plan

from . import systemd
from .errors import SupervisorError, TargetError
from .events import Event, EventBus
from .instance import FINAL, UP, Instance, State
from .logs import LogHub
from .ports import PortAllocator
from .process import kill_stale, process_stats
from .service import DependencyFailed, Service, ServiceContext
from .statefile import StateDir
from .traffic import Traffic
from .venv import VenvBuilder

log = logging.getLogger(__name__)

Target = tuple[Service, int | None]


class Daemon:
    """Everything one `corral up` / `corral daemon` runs."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.token = secrets.token_hex(8)
        self.started = time.time()
        d = plan.daemon
        self.state = StateDir(d.state_dir, plan.path)
        self.logs = LogHub(d.state_dir / "logs", d.log_max_bytes, d.log_keep, d.log_tail_lines)
        self.events = EventBus()
        self.traffic = Traffic()
        self.ports = PortAllocator()
        self.ctx = ServiceContext(
            logs=self.logs,
            ports=self.ports,
            venvs=VenvBuilder(d.state_dir / "venvs"),
            hooks=self,
            token=self.token,
        )
        self.services: dict[str, Service] = {}
        self.shutdown_requested = asyncio.Event()
        self.reload_hook: Callable[[], Awaitable[dict[str, list[str]]]] | None = None
        self._bringups: set[asyncio.Task[None]] = set()
        self._bringup_of: dict[str, asyncio.Task[None]] = {}  # per service, while it waits
        self.closing = False
        self._save_pending = False
        self._proc_cache: dict[int, psutil.Process] = {}

    # --- lifetime --------------------------------------------------------------------------------

    async def run(self, *, ready: Callable[[], None] | None = None) -> None:
        """Run until `shutdown_requested` is set, then stop everything and reap it."""
        from .control import ControlServer

        self.state.lock()
        control = ControlServer(self, self.plan.daemon.socket)
        try:
            self.state.reclaim()
            scaled = self.state.scaled()
            for name, spec in self.plan.services.items():
                desired = spec.instances
                if name in scaled and scaled[name][1] == spec.instances:
                    desired = scaled[name][0]  # a runtime scale outlives restarts of the daemon
                self.services[name] = Service(spec, self.ctx, desired)
            self._save()
            # The proxy binds first: if its port is taken the daemon exits before it answers
            # on the control socket, so `up -d` reports the error instead of a half-started stack.
            if self.plan.proxy is not None:
                self.traffic.configure(self.plan)
                await self.traffic.start(self.plan.proxy)
            await control.open()
            self.events.emit(Event("daemon", new="started", detail=str(self.plan.path)))
            for service in self.services.values():
                self.bring_up(service)
            systemd.notify("READY=1", f"STATUS={self.status_line()}")
            if ready is not None:
                ready()
            watchdog = systemd.watchdog_interval()
            if watchdog is not None:
                # Pinged from the event loop itself: a wedged loop stops the pings and systemd
                # restarts us, which is the point of WatchdogSec.
                self.bring_task(self._watchdog(watchdog), "watchdog")
            await self.shutdown_requested.wait()
            systemd.notify("STOPPING=1")
        finally:
            await self._stop_everything()
            # End `logs -f` / `events -f` streams first, or the control server would wait on
            # them forever while closing.
            self.events.close()
            self.logs.close()
            await control.close()
            self.state.unlock()

    async def _stop_everything(self) -> None:
        self.closing = True  # orders arriving from now on are refused (see _check_open)
        for task in self._bringups:
            task.cancel()
        await asyncio.gather(*self._bringups, return_exceptions=True)
        await self.ctx.venvs.aclose()  # a build in flight is killed, its half-made venv removed
        # Dependents first: an api should not lose its database while it is still draining.
        for service in reversed(list(self.services.values())):
            await service.shutdown()
        await self.traffic.stop(grace=5.0)
        # Catch-all: a process that escaped its group (double fork + setsid) still carries our
        # token in its environment; nothing we started outlives the daemon.
        await asyncio.to_thread(kill_stale, self.token, {}, 2.0)
        # Nothing runs any more; the runtime scale counts stay for the next daemon.
        self._save()
        self.events.emit(Event("daemon", new="stopped"))

    def bring_up(self, service: Service) -> None:
        """(Re)start the service's bring-up; one replaces any earlier one still waiting."""
        self.cancel_bring_up(service)
        task = self.bring_task(self._bring_up(service), f"bring-up:{service.name}")
        self._bringup_of[service.name] = task

    def cancel_bring_up(self, service: Service) -> bool:
        """Stop waiting on dependencies / the venv for `service`; True if it was waiting."""
        task = self._bringup_of.pop(service.name, None)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def bring_task(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task the daemon owns: cancelled and awaited at shutdown."""
        task = asyncio.create_task(coro, name=name)
        self._bringups.add(task)
        task.add_done_callback(self._bringups.discard)
        return task

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _bring_up(self, service: Service) -> None:
        """Wait for dependencies, build the venv, then start the instances."""
        service.phase = "waiting"
        try:
            await asyncio.gather(
                *(self._wait_dependency(dep, cond) for dep, cond in service.spec.depends_on.items())
            )
        except DependencyFailed as exc:
            service.fail(str(exc))
            self._emit_service(service, "failed", str(exc))
            return
        if not await service.prepare():
            self._emit_service(service, "failed", service.error or "")
            return
        await service.start()

    async def _wait_dependency(self, name: str, condition: DependCondition) -> None:
        dep = self.services.get(name)
        if dep is None:  # removed by a reload while we waited
            raise DependencyFailed(f"dependency {name!r} no longer exists")
        await dep.wait_for(condition)

    # --- instance hooks (InstanceHooks) ------------------------------------------------------------

    def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None:
        self.events.emit(
            Event(
                "state",
                service=inst.spec.name,
                instance=inst.name,
                old="" if inst.is_new else old.value,
                new=new.value,
                detail=detail,
                pid=inst.pid,
                port=inst.port,
            )
        )
        self.traffic.state_changed(inst, old, new)
        service = self.services.get(inst.spec.name)
        if service is not None:
            service.notify()
        # The pid of a new process is known from its first state after STARTING; writing on
        # every change (coalesced per loop turn) keeps state.json current for a hard kill.
        self._schedule_save()
        if new is State.READY or new in FINAL:
            systemd.notify(f"STATUS={self.status_line()}")

    async def drain(self, inst: Instance) -> None:
        await self.traffic.drain(inst)

    def _emit_service(self, service: Service, new: str, detail: str) -> None:
        self.events.emit(Event("service", service=service.name, new=new, detail=detail))

    def _schedule_save(self) -> None:
        # Starting or stopping 100 instances changes states hundreds of times within a second:
        # write once per 50 ms burst. A hard kill inside that window is still covered by
        # PDEATHSIG and the token sweep, which need no pid list.
        if not self._save_pending:
            self._save_pending = True
            asyncio.get_running_loop().call_later(_SAVE_DELAY, self._save)

    def _save(self) -> None:
        self._save_pending = False
        pids = {
            inst.key: inst.pid
            for service in self.services.values()
            for inst in [*service.instances.values(), *service.incoming, *service.retiring]
            if inst.pid is not None
        }
        scaled = {
            name: [s.desired, s.spec.instances]
            for name, s in self.services.items()
            if s.desired != s.spec.instances
        }
        try:
            self.state.save(self.token, pids, scaled)
        except OSError as exc:
            log.error("cannot write %s: %s", self.state.state_file, exc)

    # --- queries -------------------------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        return [
            inst
            for service in self.services.values()
            for inst in [*service.instances.values(), *service.incoming, *service.retiring]
        ]

    def ps(self) -> list[dict[str, object]]:
        rows = [row for service in self.services.values() for row in service.describe()]
        for row in rows:
            pid = row["pid"]
            cpu, rss = process_stats(pid, self._proc_cache) if isinstance(pid, int) else (0.0, 0)
            row["cpu_percent"] = cpu
            row["rss_bytes"] = rss
        return rows

    def status_line(self) -> str:
        insts = self.instances()
        up = sum(1 for i in insts if i.state in UP)
        return f"{up}/{len(insts)} instances up"

    def status(self) -> dict[str, object]:
        return {
            "project": self.plan.project,
            "config": str(self.plan.path),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "socket": str(self.plan.daemon.socket),
            "proxy": self.traffic.describe() if self.plan.proxy is not None else None,
            "services": {
                name: {
                    "desired": s.desired,
                    "configured": s.spec.instances,
                    "phase": s.phase,
                    "error": s.error,
                    "venv": str(s.venv) if s.venv else None,
                }
                for name, s in self.services.items()
            },
        }

    def resolve(self, targets: list[str]) -> list[Target]:
        """`api` → the whole service, `api.2` → one instance; unknown names raise TargetError."""
        if not targets:
            return [(s, None) for s in self.services.values()]
        out: list[Target] = []
        for target in targets:
            name, _, index = target.partition(".")
            service = self.services.get(name)
            if service is None:
                known = ", ".join(self.services) or "none"
                raise TargetError(f"no service {name!r} (services: {known})")
            if not index:
                out.append((service, None))
                continue
            if not index.isdigit() or int(index) not in service.instances:
                have = ", ".join(f"{name}.{i}" for i in sorted(service.instances)) or "none"
                raise TargetError(f"no instance {target!r} (instances: {have})")
            out.append((service, int(index)))
        return out

    # --- operations ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closing:
            raise SupervisorError("the daemon is shutting down")

    async def start(self, targets: list[str]) -> None:
        self._check_open()
        for service, index in self.resolve(targets):
            if index is None and service.phase == "held":
                self.bring_up(service)  # it was stopped while waiting: wait again
            else:
                await service.start_instances(None if index is None else [index])

    async def stop(self, targets: list[str]) -> None:
        self._check_open()
        resolved = self.resolve(targets)
        for service, index in resolved:
            if index is None and self.cancel_bring_up(service):
                service.phase = "held"  # stopped before it started: stays so until `start`
        await asyncio.gather(
            *(service.stop(None if index is None else [index]) for service, index in resolved)
        )

    async def restart(self, targets: list[str], *, rolling: bool = True) -> None:
        self._check_open()
        for service, index in self.resolve(targets):
            self._emit_service(service, "restarting", "rolling" if rolling else "all at once")
            await service.restart(None if index is None else [index], rolling=rolling)
            self._emit_service(service, "restarted", "")

    async def scale(self, counts: dict[str, int]) -> None:
        self._check_open()
        for name in counts:
            if name not in self.services:
                known = ", ".join(self.services) or "none"
                raise TargetError(
                    f"scale takes service names; no service {name!r} (services: {known})"
                )
        await asyncio.gather(*(self.services[name].scale(n) for name, n in counts.items()))
        for name, n in counts.items():
            self.events.emit(Event("scale", service=name, new=str(n)))
        self._save()

    async def save_counts(self, counts: dict[str, int]) -> None:
        """`scale --save`: write the counts into corral.toml, keeping the user's formatting."""
        for name, count in counts.items():
            await asyncio.to_thread(config.set_instances, self.plan.path, name, count)
            service = self.services[name]
            # The config now says so: this is no longer a runtime override.
            service.spec = dataclasses.replace(service.spec, instances=count)
            self.plan.services[name] = service.spec
        self._save()

    async def wait_settled(self, timeout: float) -> list[dict[str, object]]:
        """Wait until every instance is up or settled (for `up -d`); return ps rows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.ps()
            if all(r["ready"] or r["state"] in _SETTLED for r in rows):
                return rows
            await asyncio.sleep(0.05)
        return self.ps()


_SAVE_DELAY = 0.05
_SETTLED = frozenset({"failed", "completed", "stopped"})
