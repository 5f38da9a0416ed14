"""One `[services.NAME]`: its desired state, its instances, and the orders that change them.

The Service is the only writer of its phase, desired count, spec and instance lists; the daemon
and the reload path change them through the methods below, never by assignment.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from config.model import DependCondition, Roll, ServiceSpec

from . import rlimits
from .dependency import satisfies, until_recoverable, wait_for_all, wait_for_condition
from .errors import DependencyFailed, PortInUse, RollFailed, SupervisorError, VenvError
from .instance import Instance, InstanceHooks, Runtime
from .logs import LogHub
from .ports import PortAllocator
from .privatedir import allow_traversal
from .process import base_environ
from .roll import Roller
from .runas import RunAs, check_reachable, chown_tree, resolve
from .sampler import StatsSnapshot
from .states import Phase, State
from .status import InstanceRow, service_rows
from .venv import VenvBuilder

__all__ = ["DependencyFailed", "Phase", "RollFailed", "Service", "ServiceContext"]

log = logging.getLogger(__name__)


_SERVING = frozenset({State.READY, State.UNHEALTHY, State.RUNNING})
# Phases in which the service has not started its instances (yet).
_NOT_STARTED = frozenset({Phase.FAILED, Phase.PENDING, Phase.WAITING, Phase.BUILDING, Phase.HELD})


class ServiceHooks(InstanceHooks, Protocol):
    """What a service tells the daemon beyond its instances' state changes."""

    def service_event(self, service: Service, new: str, detail: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What every service shares, owned by the daemon."""

    logs: LogHub
    ports: PortAllocator
    venvs: VenvBuilder
    hooks: ServiceHooks
    token: str
    runtime: Runtime
    lookup: Callable[[str], Service | None]  # another service by name (for dependencies)


class Service:
    """Desired state of one `[services.NAME]` and the instances that realise it."""

    def __init__(self, spec: ServiceSpec, ctx: ServiceContext, desired: int | None = None) -> None:
        self._spec = spec
        self._ctx = ctx
        self._desired = spec.instances if desired is None else desired
        self._instances: dict[int, Instance] = {}
        self._roller = Roller()  # owns a roll's incoming and retiring incarnations
        self._venv: Path | None = None
        self._run_as: RunAs | None = None  # `user` / `group`, resolved by prepare()
        self._rlimits: tuple[rlimits.Limit, ...] = ()
        self._error: str | None = None  # why the service cannot run (venv build, dependency)
        self._phase = Phase.PENDING
        self._closed = False
        self._generation = 0
        self._lock = asyncio.Lock()  # one structural operation at a time
        self._changed = asyncio.Event()
        self._bringup: asyncio.Task[None] | None = None
        self._shrinking: set[Instance] = set()  # scaled in by the autoscaler, draining
        self._stopped_by_order = False  # `corral stop api`: the autoscaler leaves it alone

    # --- what others may read ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def spec(self) -> ServiceSpec:
        return self._spec

    @property
    def desired(self) -> int:
        return self._desired

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def venv(self) -> Path | None:
        return self._venv

    @property
    def venv_build_seconds(self) -> float | None:
        """How long this daemon's last build of the service's venv took (None: none built)."""
        return self._ctx.venvs.build_seconds.get(self.name)

    @property
    def instances(self) -> Mapping[int, Instance]:
        return MappingProxyType(self._instances)

    @property
    def incoming(self) -> tuple[Instance, ...]:
        return tuple(self._roller.incoming)

    @property
    def retiring(self) -> tuple[Instance, ...]:
        return tuple(self._roller.retiring)

    @property
    def shrinking(self) -> tuple[Instance, ...]:
        """Instances the autoscaler scaled in, draining before they stop."""
        return tuple(sorted(self._shrinking, key=lambda i: i.index))

    def everything(self) -> list[Instance]:
        """Every incarnation this service holds: current, incoming, retiring and shrinking."""
        return [
            *self._instances.values(),
            *self._roller.incoming,
            *self._roller.retiring,
            *self._shrinking,
        ]

    # --- autoscaling (the autoscaler's orders: autoscaler.py) -------------------------------------

    @property
    def autoscaling(self) -> bool:
        """Whether the autoscaler may change the count now: autoscaled, started, not stopped
        by an order, not failed."""
        return (
            self._spec.scale is not None
            and not self._closed
            and not self._stopped_by_order
            and self._phase in (Phase.RUNNING, Phase.ROLLING)
        )

    @property
    def resizable(self) -> bool:
        """Whether `resize` acts now (no roll, reload or order holds the service)."""
        return self.autoscaling and not self._lock.locked()

    @property
    def stopped_by_order(self) -> bool:
        return self._stopped_by_order

    def ready_count(self) -> int:
        """Instances ready for requests."""
        return sum(1 for inst in self._instances.values() if inst.state is State.READY)

    def frozen_instance(self) -> Instance | None:
        return next((i for i in self._instances.values() if i.state is State.FROZEN), None)

    def needs_resize(self, count: int, *, freeze: bool) -> bool:
        """Whether `resize(count)` would change anything: an instance past `count` to stop
        (or freeze), or a frozen one that should run."""
        for index, inst in self._instances.items():
            if index > count and not (freeze and count == 0 and index == 1 and _frozen(inst)):
                return True
            if index <= count and inst.state is State.FROZEN:
                return True
        return any(index not in self._instances for index in range(1, count + 1))

    def resize(self, count: int, *, freeze: bool = False) -> bool:
        """Run `count` instances, now: missing ones are spawned (a frozen one is thawed),
        those past `count` are taken out of the pool and stopped in the background after they
        drain. With `freeze` and count 0, instance 1 is frozen instead of stopped.

        Returns False, changing nothing, while a structural operation (a roll, a reload, an
        order) holds the service: the autoscaler asks again at its next tick.
        """
        if not self.resizable:
            return False
        self._desired = count
        for index in range(1, count + 1):
            inst = self._instances.get(index)
            if inst is None:
                # Its old incarnation may still drain on the configured port: take another.
                fresh = any(old.index == index for old in self._shrinking)
                inst = self._spawn(index, fresh_port=fresh)
                self._instances[index] = inst
            elif inst.state is State.FROZEN:
                inst.thaw()
        for index in sorted(self._instances):
            if index <= count:
                continue
            inst = self._instances[index]
            if freeze and count == 0 and index == 1 and (_frozen(inst) or inst.freeze()):
                continue  # kept, frozen: the next request thaws it
            self._shrink(self._instances.pop(index))
        self.notify()
        return True

    def _shrink(self, inst: Instance) -> None:
        self._shrinking.add(inst)

        async def stop() -> None:
            try:
                await inst.stop()  # drains first
            finally:
                self._shrinking.discard(inst)
                self._ctx.ports.release(inst.port_owner)
                self.notify()

        self._ctx.runtime.spawn(stop(), f"scale-in:{inst.name}")

    # --- bring-up ------------------------------------------------------------------------------

    def bring_up(self) -> None:
        """Wait for dependencies, build the venv, start; replaces a bring-up still waiting."""
        self.cancel_bring_up()
        self._bringup = self._ctx.runtime.spawn(self._bring_up(), f"bring-up:{self.name}")

    def cancel_bring_up(self) -> bool:
        """Stop waiting on dependencies / the venv; True if it was waiting."""
        task, self._bringup = self._bringup, None
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def hold(self) -> None:
        """`corral stop` before the service started: it stays so until `corral start`."""
        if self.cancel_bring_up():
            self._phase = Phase.HELD

    async def _bring_up(self) -> None:
        while True:
            self._phase = Phase.WAITING
            try:
                await wait_for_all(self._spec.depends_on, self._ctx.lookup)
                break
            except DependencyFailed as exc:
                self.fail(str(exc))
                self._ctx.hooks.service_event(self, "failed", str(exc))
            # Failed, and reported so (`up -d` says so): but when the dependency comes back
            # (a crash loop retried after its cool-down, `corral start db`), so does this one.
            if not await until_recoverable(self._spec.depends_on, self._ctx.lookup):
                return
        if not await self.prepare():
            self._ctx.hooks.service_event(self, "failed", self._error or "")
            return
        await self.start()

    async def prepare(self) -> bool:
        """Resolve who the instances run as and their rlimits, build (or reuse) the venv.
        False, with `error` set, if this service cannot run."""
        try:
            run_as = resolve(self._spec)
            limits = rlimits.prepare(self.name, self._spec.rlimits)
        except SupervisorError as exc:
            return self._cannot_run(str(exc))
        if self._spec.venv:
            before = self._phase
            self._phase = Phase.BUILDING
            sink = self._ctx.logs.sink(self.name, 0)
            try:
                self._venv = await self._ctx.venvs.ensure(
                    self._spec, lambda line: sink.write("corral", line)
                )
            except VenvError as exc:
                self._phase = before
                return self._cannot_run(f"virtualenv build failed: {exc}")
            self._phase = Phase.PENDING if before in _NOT_STARTED else before
        if run_as is not None:
            try:
                await asyncio.to_thread(self._hand_over, run_as)
            except (SupervisorError, OSError) as exc:
                return self._cannot_run(str(exc))
        self._run_as, self._rlimits = run_as, limits
        self._ctx.logs.own(self.name, None if run_as is None else (run_as.uid, run_as.gid))
        self._error = None
        return True

    def _cannot_run(self, reason: str) -> bool:
        if any(inst.alive for inst in self._instances.values()):
            # A rebuild (watch, reload, restart) failed: the running instances keep their
            # old venv and keep serving; the error is reported, nothing is stopped.
            self._error = reason
            self._ctx.logs.sink(self.name, 0).write("corral", reason + " (still serving)")
        else:
            self.fail(reason)
        return False

    def _hand_over(self, who: RunAs) -> None:
        """The venv becomes the user's, and the user must reach it and the working directory
        (blocking: a venv has thousands of files)."""
        places = [self._spec.cwd]
        if self._venv is not None:
            allow_traversal(self._ctx.venvs.root.parent)  # the state dir, 0711
            chown_tree(self._venv, who)
            places.append(self._venv / "bin")
            places.append(Path(os.path.realpath(self._venv / "bin" / "python")).parent)
        elif os.path.isabs(self._spec.command[0]):
            places.append(Path(os.path.realpath(self._spec.command[0])).parent)
        check_reachable(self._spec, who, places)

    async def start(self) -> None:
        """Spawn instances up to the desired count (the last step of a bring-up)."""
        async with self._lock:
            if self._closed:
                return
            self._phase = Phase.RUNNING
            for index in range(1, self._desired + 1):
                inst = self._instances.get(index)
                if inst is None:
                    self._spawn(index)
                elif not inst.alive:
                    await self._revive(inst)
        # A service with no instances to change state must still wake its dependents.
        self.notify()

    def fail(self, reason: str) -> None:
        self._error = reason
        self._phase = Phase.FAILED
        log.error("%s: %s", self.name, reason)
        self._ctx.logs.sink(self.name, 0).write("corral", reason)
        self.notify()

    def environ(self) -> dict[str, str]:
        env = base_environ()
        env["PYTHONUNBUFFERED"] = "1"  # logs should arrive line by line, not in 8 KiB blocks
        env.update(self._spec.env)
        if self._venv is not None:
            env["VIRTUAL_ENV"] = str(self._venv)
            env["PATH"] = f"{self._venv / 'bin'}:{env.get('PATH', '')}"
        if self._run_as is not None:
            env.update(self._run_as.environ())
        env["CORRAL_TOKEN"] = self._ctx.token
        return env

    def _spawn(self, index: int, *, fresh_port: bool = False) -> Instance:
        self._check_open()
        self._generation += 1
        owner = f"{self.name}.{index}#{self._generation}"
        port: int | None = None
        error = ""
        if self._spec.has_port:
            preferred = self._spec.port + index - 1 if self._spec.port is not None else None
            try:
                if fresh_port:
                    taken = {i.port for i in self._instances.values() if i.port is not None}
                    port = self._ctx.ports.fresh(owner, avoid=taken)
                else:
                    port = self._ctx.ports.assign(owner, preferred, self._spec.auto_port)
            except PortInUse as exc:
                error = str(exc)
        inst = Instance(
            self._spec,
            index,
            port,
            env=self.environ(),
            sink=self._ctx.logs.sink(self.name, index),
            runtime=self._ctx.runtime,
            generation=self._generation,
            run_as=self._run_as,
            rlimits=self._rlimits,
        )
        inst.port_owner = owner
        if error:
            inst.fail_now(error)
        else:
            inst.start()
        if not fresh_port:
            self._instances[index] = inst
        return inst

    async def _revive(self, inst: Instance) -> None:
        """Start an instance that serves nothing (stopped, failed, backing off) again, with
        the service's current settings."""
        if inst.alive:
            await inst.stop()  # ends its backoff or cool-down
        same = inst.spec == self._spec and inst.env == self.environ()
        if same and (inst.port is not None or not self._spec.has_port):
            inst.start()
            return
        # New settings (a reload), or it never got its port: a new incarnation, port booked
        # again (the configured one if it is free by now).
        self._ctx.ports.release(inst.port_owner)
        self._instances.pop(inst.index, None)
        self._spawn(inst.index)

    # --- dependencies ----------------------------------------------------------------------------

    def satisfies(self, condition: DependCondition) -> bool | None:
        """True if met, False if it can never be met (without an order), None if not yet."""
        states = [inst.state for inst in self._instances.values()]
        return satisfies(condition, self._phase, states, self._desired)

    def notify(self) -> None:
        """Wake waiters on this service's condition (called on every instance state change)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Return at the next change of this service or of one of its instances."""
        await self._changed.wait()

    async def wait_for(self, condition: DependCondition) -> None:
        """Return once `condition` is met; DependencyFailed if it cannot be (now)."""
        await wait_for_condition(self, condition)

    # --- orders ----------------------------------------------------------------------------------

    async def scale(self, count: int) -> None:
        """Change the instance count; scaling down drains the highest indexes first."""
        async with self._lock:
            self._check_open()
            self._desired = count
            if self._phase in _NOT_STARTED:
                return
            for index in range(1, count + 1):
                if index not in self._instances:
                    self._spawn(index)
            extra = [self._instances.pop(i) for i in sorted(self._instances) if i > count]
            await self._stop_instances(extra)

    async def stop(self, indexes: Iterable[int] | None = None) -> None:
        """Stop instances (all by default) and keep them stopped until started again."""
        async with self._lock:
            if indexes is None:
                self._stopped_by_order = True  # no autoscaling until `corral start`
                if self._spec.scale is not None:
                    self._desired = 0  # what runs now; `corral start` begins again from min
            targets = self._pick(indexes)
            await asyncio.gather(*(inst.stop() for inst in targets))

    async def start_instances(self, indexes: Iterable[int] | None = None) -> None:
        """(Re)start stopped or failed instances, in place; a failed one is retried now."""
        async with self._lock:
            self._check_open()
            if self._phase is Phase.FAILED and self._error:
                self._error = None
                if not await self.prepare():
                    return
            self._phase = Phase.RUNNING
            if indexes is None:
                self._stopped_by_order = False
                if self._spec.scale is not None:
                    # From min, as at daemon start: the autoscaler starts what requests need.
                    self._desired = max(self._desired, self._spec.scale.min)
                    await self._drop_unwanted()
                for index in range(1, self._desired + 1):
                    if index not in self._instances:
                        self._spawn(index)
            for inst in self._pick(indexes):
                if inst.state in (State.FAILED, State.BACKOFF, State.STOPPED, State.COMPLETED):
                    await self._revive(inst)

    async def restart(self, indexes: Iterable[int] | None = None, *, rolling: bool = True) -> None:
        """Restart instances: rolling (replacement first, then drain the old) or all at once.

        With a venv, its requirements are checked first: if they changed (by hash), the new
        venv is built while the old one serves, and the restart moves onto it.
        """
        async with self._lock:
            self._check_open()
            if not await self.prepare():
                kept = "their venv" if self._spec.venv else "running"
                raise SupervisorError(
                    f"{self.name}: not restarted, the running instances keep {kept}: {self._error}"
                )
            if indexes is None and self._spec.scale is not None:
                await self._drop_unwanted()
            targets = self._pick(indexes)
            if not rolling or self._spec.oneshot:
                await asyncio.gather(*(inst.stop() for inst in targets))
                for inst in targets:
                    await self._revive(inst)
                return
            # Nothing serves from a stopped, failed or backing-off instance, so there is
            # nothing to roll: start it (with the current settings). One still starting is
            # left alone.
            for inst in targets:
                if inst.state not in _SERVING and inst.state is not State.STARTING:
                    await self._revive(inst)
            await self._roll([i for i in targets if i.state in _SERVING])

    async def _drop_unwanted(self) -> None:
        """An autoscaled service's instances past its count (stopped by an order, or frozen
        at zero) go, rather than being started only for the autoscaler to stop them again."""
        extra = [self._instances.pop(i) for i in sorted(self._instances) if i > self._desired]
        await self._stop_instances(extra)

    async def _roll(self, targets: list[Instance]) -> None:
        self._phase = Phase.ROLLING
        try:
            if self._spec.roll is Roll.IN_PLACE:
                await self._roller.in_place(self, targets)
            else:
                await self._roller.surge(self, targets)
        finally:
            if not self._closed:
                self._phase = Phase.RUNNING

    # --- RollTarget: what the roll asks of the service (roll.py) --------------------------------

    def spawn_replacement(self, index: int) -> Instance:
        return self._spawn(index, fresh_port=True)

    def promote(self, new: Instance) -> None:
        self._instances[new.index] = new

    def respawn(self, index: int) -> Instance:
        return self._spawn(index)

    async def stop_instances(self, insts: list[Instance]) -> None:
        await self._stop_instances(insts)

    async def _stop_instances(self, insts: list[Instance]) -> None:
        await asyncio.gather(*(inst.stop() for inst in insts))
        for inst in insts:
            self._ctx.ports.release(inst.port_owner)

    async def roll_onto(self, spec: ServiceSpec) -> None:
        """A reload changed how the processes run: roll every instance onto `spec`."""
        self._spec = spec
        self._desired = _count_under(spec, self._desired)
        if not any(inst.has_process for inst in self._instances.values()):
            # Nothing is serving (failed, or still waiting): start afresh with the new settings.
            await self.reset()
            self.bring_up()
            return
        if not await self.prepare():
            raise SupervisorError(f"{self.name}: {self._error}")
        await self.restart(rolling=True)
        await self.scale(_count_under(spec, self._desired))

    def update(self, spec: ServiceSpec) -> None:
        """Settings that need no restart (policies, routing, counts saved to the file)."""
        rewait = spec.depends_on != self._spec.depends_on and self._phase in (
            Phase.PENDING,
            Phase.WAITING,
        )
        self._spec = spec
        for inst in self.everything():
            inst.update_spec(spec)
        if spec.scale is None:
            # No longer autoscaled: nothing thaws a frozen instance on demand any more.
            for inst in self._instances.values():
                inst.thaw()
        else:
            self._desired = _count_under(spec, self._desired)
        if rewait:
            self.bring_up()  # wait on the new dependencies instead

    def _check_open(self) -> None:
        if self._closed:
            raise SupervisorError(f"{self.name}: the daemon is shutting down")

    async def shutdown(self) -> None:
        """Stop everything this service runs (daemon exit or service removed).

        Takes no lock: an order holding it (a roll waiting for a replacement) must not delay a
        shutdown. Once closed, no order can spawn anything here, and what runs is stopped.
        """
        self._closed = True  # no order may start anything here any more
        self._phase = Phase.STOPPED
        self.cancel_bring_up()
        await self._stop_instances(self.everything())
        self.notify()

    async def reset(self) -> None:
        """Forget instances without a process (a reload gives a failed service a fresh start)."""
        async with self._lock:
            dead = [i for i in self._instances.values() if not i.has_process]
            await self._stop_instances(dead)
            for inst in dead:
                self._instances.pop(inst.index, None)
            self._error = None
            self._phase = Phase.PENDING
        self.notify()

    def _pick(self, indexes: Iterable[int] | None) -> list[Instance]:
        if indexes is None:
            return [self._instances[i] for i in sorted(self._instances)]
        return [self._instances[i] for i in indexes if i in self._instances]

    # --- reporting -------------------------------------------------------------------------------

    def rows(self, stats: StatsSnapshot, now: float) -> list[InstanceRow]:
        """This service's lines of `corral ps`."""
        return service_rows(self, stats, now)


def _frozen(inst: Instance) -> bool:
    return inst.state is State.FROZEN


def _count_under(spec: ServiceSpec, current: int) -> int:
    """The count to keep for `spec`: the autoscaler's, within the new min and max, or the
    configured one of a service that is not autoscaled."""
    if spec.scale is None:
        return spec.instances
    return min(max(current, spec.scale.min), spec.scale.max)
