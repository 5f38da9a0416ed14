"""The daemon: owns every service, task, the proxy and the control socket for one corral.toml."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from config.model import Plan

from . import activation, memory, systemd
from .autoscaler import Autoscaler
from .clock import SYSTEM_CLOCK, Clock
from .events import Event, EventBus
from .instance import UP, Instance, Runtime, State
from .logs import LogHub
from .nursery import Nursery
from .ports import PortAllocator
from .process import kill_stale
from .recorder import Recorder
from .registry import Registry
from .reload import PlanDiff, Reloader
from .sampler import Sampler, StatsSnapshot
from .scope import Scopes
from .service import Phase, Service, ServiceContext
from .statefile import StateDir
from .status import DaemonStatus, InstanceRow, daemon_status, settled, summary_line
from .targets import Target
from .traffic import Traffic
from .venv import VenvBuilder

log = logging.getLogger(__name__)

T = TypeVar("T")
# A task that runs beside the daemon (the log printer of `corral up`, the file watcher):
# started once the daemon is up, cancelled when it stops.
Companion = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


class Daemon:
    """Everything one `corral up` / `corral daemon` runs."""

    def __init__(self, plan: Plan, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.token = secrets.token_hex(8)
        self.started = time.time()
        d = plan.daemon
        self.state = StateDir(d.state_dir, plan.path)
        self._logs = LogHub(d.logs_dir, d.log_max_bytes, d.log_keep, d.log_tail_lines)
        self._events = EventBus()
        self.traffic = Traffic()
        self._nursery = Nursery()
        self._forced = asyncio.Event()
        self._scopes = Scopes(self.token, self._nursery.spawn, clock=clock)
        self._registry = Registry(plan, self.traffic)  # the plan and the services
        self.ctx = ServiceContext(
            logs=self._logs,
            ports=PortAllocator(),
            venvs=VenvBuilder(d.state_dir / "venvs", spawn=self._nursery.spawn, cache=d.cache_dir),
            hooks=self,
            token=self.token,
            runtime=Runtime(
                hooks=self,
                spawn=self._nursery.spawn,
                clock=clock,
                forced=self._forced,
                scopes=self._scopes,
            ),
            lookup=self._registry.get,
        )
        self._registry.use(self.ctx)
        self._sampler = Sampler(
            self._pids,
            clock=clock,
            pace=self._memory_pace,
            observe=self._watch_memory,
            members=self._cgroup_members,
        )
        self._autoscaler = Autoscaler(
            lambda: self._registry.services, self.traffic, self._events, clock=clock
        )
        self.traffic.on_demand = self._autoscaler.activate
        self._reloader = Reloader(self)
        self._recorder = Recorder(
            self.state, self.token, self._recorded_pids, self._registry.scaled_counts
        )
        self.notifier = systemd.Notifier(self.status_line, lambda: settled(self.ps()))
        self.shutdown_requested = asyncio.Event()
        self.internal_errors = 0  # bugs caught in instance lives (tests assert none)

    # --- what others may read (see view.py) -------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self._registry.plan

    @property
    def services(self) -> Mapping[str, Service]:
        return self._registry.services

    @property
    def logs(self) -> LogHub:
        return self._logs

    @property
    def events(self) -> EventBus:
        return self._events

    @property
    def nursery(self) -> Nursery:
        return self._nursery

    # --- lifetime --------------------------------------------------------------------------------

    async def run(
        self, *, ready: Callable[[], None] | None = None, companions: Sequence[Companion] = ()
    ) -> None:
        """Run until `shutdown_requested` is set, then stop everything and reap it.

        Every task of the daemon lives in the one TaskGroup entered here. Stopping is done
        inside it, in order: orders first (a roll must not hold up a shutdown), then bring-ups
        and venv builds, then the services (dependents first), the proxy, and a last sweep;
        then whatever is left (watchdog, sampler, companions, streams) is cancelled.
        """
        from .control import ControlServer

        self.state.lock()
        control = ControlServer(self, self.plan.daemon.socket)
        failed: Exception | None = None
        try:
            async with asyncio.TaskGroup() as group:
                self._nursery.open(group)
                try:
                    await self._start(control, ready, companions)
                    await self.shutdown_requested.wait()
                    self.notifier.stopping()
                except Exception as exc:
                    failed = exc  # a start-up error: raised as itself, not as an ExceptionGroup
                finally:
                    await self._stop_everything()
                    # End `logs -f` / `events -f` / stats streams first (their sources close,
                    # and they get a moment to finish cleanly), or the control server would
                    # wait on them forever while closing.
                    self._events.close()
                    self._logs.close()
                    await self._nursery.let_attached_end(timeout=2.0)
                    self._nursery.cancel_all()
        finally:
            await control.close()
            self.state.unlock()
        if failed is not None:
            raise failed

    async def _start(
        self,
        control: Any,
        ready: Callable[[], None] | None,
        companions: Sequence[Companion],
    ) -> None:
        previous = self.state.read().get("token")
        self.state.reclaim()
        self._scopes.open()  # per-instance cgroups, if this daemon may have them
        self._scopes.remove_stale(previous if isinstance(previous, str) else None)
        self._registry.populate(self.state.scaled())
        self._recorder.now()
        # The proxy binds first: if its port is taken the daemon exits before it answers
        # on the control socket, so `up -d` reports the error instead of a half-started stack.
        inherited = activation.take()  # socket activation: the proxy's listening sockets
        if self.plan.proxy is not None:
            self.traffic.configure(self.plan)
            await self.traffic.start(self.plan.proxy, inherited.for_proxy())
            if inherited.sockets and set(self.traffic.addresses) != set(self.plan.proxy.listen):
                log.warning(
                    "proxy serves the sockets systemd passed (%s), not [proxy] listen (%s)",
                    ", ".join(f"{h}:{p}" for h, p in self.traffic.addresses),
                    ", ".join(f"{h}:{p}" for h, p in self.plan.proxy.listen),
                )
        elif inherited.sockets:
            log.warning("socket activation: no [proxy] to serve the passed sockets; closing them")
            inherited.close()
        await control.open()
        self._events.emit(Event("daemon", new="started", detail=str(self.plan.path)))
        for service in self.services.values():
            service.bring_up()
        self._nursery.spawn(self._sampler.run(), "stats")
        self._nursery.spawn(self._autoscaler.run(), "autoscaler")
        # READY=1 once every service is ready, completed or failed (not now: nothing is up yet).
        self._nursery.spawn(self.notifier.run(), "systemd notifier")
        if ready is not None:
            ready()
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            self._nursery.spawn(systemd.watchdog(watchdog), "watchdog")
        for name, make in companions:
            self._nursery.spawn(make(), name)

    async def _stop_everything(self) -> None:
        await self._nursery.stop_orders()  # and refuse new ones
        self._scopes.closing = True  # one token sweep at the end instead of one per instance
        self._registry.cancel_bring_ups()
        forced = self._forced.is_set()
        # The proxy goes first, as nginx quits: it stops accepting, closes idle keep-alive
        # connections and lets the requests under way finish on instances that are still up.
        # Stopping the services first would answer those requests with errors.
        await self.traffic.stop(grace=0.0 if forced else 5.0)
        await self.ctx.venvs.aclose()  # a build in flight is killed, its half-made venv removed
        await self._registry.shutdown()
        # Catch-all: a process that escaped its group (double fork + setsid) still carries our
        # token in its environment; nothing we started outlives the daemon.
        await asyncio.to_thread(kill_stale, self.token, {}, 0.5 if forced else 2.0)
        await asyncio.to_thread(self._scopes.close)
        # Nothing runs any more; the runtime scale counts stay for the next daemon.
        self._recorder.now()
        self._events.emit(Event("daemon", new="stopped"))

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    def kill_everything(self) -> None:
        """A second Ctrl-C: SIGKILL every process now; the shutdown then finishes at once."""
        self._forced.set()
        for inst in self.instances():
            inst.kill_now()

    async def stream(self, work: Coroutine[Any, Any, T], name: str) -> T:
        return await self._nursery.attach(work, name)

    async def order(self, work: Coroutine[Any, Any, T], name: str) -> T:
        """Run `work` as an order: owned by the daemon, cancelled first by shutdown."""
        return await self._nursery.order(work, name)

    # --- hooks: what instances and services report -------------------------------------------

    def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None:
        self._events.emit(
            Event(
                "state",
                service=inst.spec.name,
                instance=inst.name,
                old="" if inst.is_new else old.value,
                new=new.value,
                detail=detail + inst.retry_note(),
                pid=inst.pid,
                port=inst.port,
                retry_at=inst.retry_at,
            )
        )
        self.traffic.state_changed(inst, old, new)
        self._autoscaler.instance_changed(inst, new)
        service = self._registry.get(inst.spec.name)
        if service is not None:
            service.notify()
        if new in UP and inst.pid is not None:
            self._sampler.track(inst.pid)
        # The pid of a new process is known from its first state after STARTING; writing on
        # every change (coalesced per loop turn) keeps state.json current for a hard kill.
        self._recorder.soon()
        self.notifier.changed()

    async def drain(self, inst: Instance) -> None:
        await self.traffic.drain(inst)

    def internal_error(self, inst: Instance, exc: BaseException) -> None:
        self.internal_errors += 1

    def service_event(self, service: Service, new: str, detail: str) -> None:
        self._events.emit(Event("service", service=service.name, new=new, detail=detail))
        if new == "failed":
            self.traffic.service_failed(service.name, detail)
        self.notifier.changed()

    def _memory_pace(self) -> float | None:
        """Sample fast enough for the shortest memory_grace (three looks per grace)."""
        graces = [s.spec.memory_grace for s in self.services.values() if s.spec.memory_limit]
        return memory.pace(min(graces)) if graces else None

    def _watch_memory(self, stats: StatsSnapshot) -> None:
        for inst in self.instances():
            if inst.spec.memory_limit is not None and inst.pid is not None:
                if (sample := stats.processes.get(inst.pid)) is not None:
                    inst.observe_memory(sample.rss_bytes)

    def _recorded_pids(self) -> dict[str, int]:
        return {inst.key: inst.pid for inst in self.instances() if inst.pid is not None}

    # --- queries -------------------------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        return self._registry.instances()

    def _pids(self) -> list[int]:
        return [inst.pid for inst in self.instances() if inst.pid is not None]

    def _cgroup_members(self) -> dict[int, list[int]]:
        """Each instance's processes in its cgroup, escaped ones included (the sampler's)."""
        return {
            inst.pid: inst.scope.cgroup.pids()
            for inst in self.instances()
            if inst.pid is not None and inst.scope is not None and inst.scope.cgroup is not None
        }

    def ps(self) -> list[InstanceRow]:
        stats, now = self._sampler.latest, time.time()
        return [row for service in self.services.values() for row in service.rows(stats, now)]

    def stats(self) -> StatsSnapshot:
        return self._sampler.latest

    async def next_stats(self, seq: int) -> StatsSnapshot:
        return await self._sampler.next_after(seq)

    def stats_followed(self) -> AbstractAsyncContextManager[None]:
        return self._sampler.followed()

    def service_names(self) -> list[str]:
        return list(self.services)

    def desired_counts(self) -> dict[str, int]:
        return {name: s.desired for name, s in self.services.items()}

    def proxy_metrics(self) -> str:
        return self.traffic.metrics()

    def autoscaler_metrics(self) -> str:
        return self._autoscaler.metrics()

    def status_line(self) -> str:
        """ "api 3/3 ready, worker 1/1 running": what systemd shows as the unit's Status."""
        return summary_line(self.services.values())

    def status(self) -> DaemonStatus:
        plan = self.plan
        proxy = self.traffic.describe() if plan.proxy is not None else None
        return daemon_status(
            plan,
            self.started,
            proxy,
            self.services.values(),
            self._scopes.mechanism,
            autoscale=self._autoscaler.describe,
        )

    def resolve(self, targets: list[str]) -> list[Target]:
        """`api` → the whole service, `api.2` → one instance; unknown names raise TargetError."""
        return self._registry.resolve(targets)

    def cancel_bring_up(self, service: Service) -> bool:
        """Stop `service` waiting on dependencies / its venv; True if it was waiting."""
        return service.cancel_bring_up()

    async def wait_settled(self, timeout: float) -> list[InstanceRow]:
        """Wait until every instance is up or settled (for `up -d`); return ps rows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.ps()
            if settled(rows):
                return rows
            await asyncio.sleep(0.05)
        return self.ps()

    # --- orders: each runs as a task of the daemon (see nursery.py) -------------------------------

    async def start(self, targets: list[str]) -> None:
        await self.order(self._start_targets(targets), "start")

    async def _start_targets(self, targets: list[str]) -> None:
        for service, index in self.resolve(targets):
            if index is None and service.phase is Phase.HELD:
                service.bring_up()  # it was stopped while waiting: wait again
            else:
                await service.start_instances(None if index is None else [index])

    async def stop(self, targets: list[str]) -> None:
        await self.order(self._stop_targets(targets), "stop")

    async def _stop_targets(self, targets: list[str]) -> None:
        resolved = self.resolve(targets)
        for service, index in resolved:
            if index is None:
                service.hold()  # stopped before it started: stays so until `start`
        await asyncio.gather(
            *(service.stop(None if index is None else [index]) for service, index in resolved)
        )

    async def restart(self, targets: list[str], *, rolling: bool = True) -> None:
        await self.order(self._restart_targets(targets, rolling), "restart")

    async def _restart_targets(self, targets: list[str], rolling: bool) -> None:
        for service, index in self.resolve(targets):
            self.service_event(service, "restarting", "rolling" if rolling else "all at once")
            await service.restart(None if index is None else [index], rolling=rolling)
            self.service_event(service, "restarted", "")

    async def scale(self, counts: dict[str, int]) -> None:
        await self.order(self._scale(counts), "scale")

    async def _scale(self, counts: dict[str, int]) -> None:
        self._registry.check_scalable(counts)
        services = self.services
        await asyncio.gather(*(services[name].scale(n) for name, n in counts.items()))
        for name, n in counts.items():
            self._events.emit(Event("scale", service=name, new=str(n)))
        self._recorder.now()

    async def save_counts(self, counts: dict[str, int]) -> None:
        """`scale --save`: write the counts into corral.toml, keeping the user's formatting."""
        await self.order(self._save_counts(counts), "scale --save")

    async def _save_counts(self, counts: dict[str, int]) -> None:
        await self._registry.save_counts(counts)
        self._recorder.now()

    async def reload(self) -> dict[str, list[str]]:
        """`corral reload`: re-read the config and apply the difference."""
        return await self._reloader.reload()

    async def apply_plan(self, new: Plan) -> PlanDiff:
        """Move to `new`: a pure diff against the plan in force, applied through Service methods."""
        return await self._registry.apply(new)
