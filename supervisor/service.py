"""A service: its venv, its desired instance count, scaling and restarts (in place or rolling)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from config.model import DependCondition, ServiceSpec

from .errors import DependencyFailed, PortInUse, RollFailed, SupervisorError, VenvError
from .instance import FINAL, UP, Instance, InstanceHooks, State
from .logs import LogHub
from .ports import PortAllocator
from .process import base_environ
from .venv import VenvBuilder

__all__ = ["DependencyFailed", "RollFailed", "Service", "ServiceContext"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServiceContext:
    """What every service shares, owned by the daemon."""

    logs: LogHub
    ports: PortAllocator
    venvs: VenvBuilder
    hooks: InstanceHooks
    token: str


class Service:
    """Desired state of one `[services.NAME]` and the instances that realise it."""

    def __init__(self, spec: ServiceSpec, ctx: ServiceContext, desired: int | None = None) -> None:
        self.spec = spec
        self.ctx = ctx
        self.desired = spec.instances if desired is None else desired
        self.instances: dict[int, Instance] = {}
        self.retiring: list[Instance] = []  # old incarnations draining during a roll
        self.incoming: list[Instance] = []  # replacements starting during a roll
        self.venv: Path | None = None
        self.error: str | None = None  # why the service cannot run (venv build, dependency)
        self.phase = (
            "pending"  # pending | waiting | building | running | rolling | failed | stopped
        )
        self.closed = False
        self._generation = 0
        self._lock = asyncio.Lock()  # one structural operation at a time
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    # --- start-up --------------------------------------------------------------------------------

    async def prepare(self) -> bool:
        """Build (or reuse) the venv. False, with `error` set, if this service cannot run."""
        if not self.spec.venv:
            return True
        self.phase = "building"
        sink = self.ctx.logs.sink(self.name, 0)
        try:
            self.venv = await self.ctx.venvs.ensure(
                self.spec, lambda line: sink.write("corral", line)
            )
        except VenvError as exc:
            reason = f"virtualenv build failed: {exc}"
            if any(inst.alive for inst in self.instances.values()):
                # A rebuild (watch, reload) failed: the running instances keep their old venv
                # and keep serving; the error is reported, nothing is stopped.
                self.error = reason
                self.phase = "running"
                self.ctx.logs.sink(self.name, 0).write("corral", reason + " (still serving)")
            else:
                self.fail(reason)
            return False
        self.error = None
        if self.phase == "building":
            self.phase = "pending"
        return True

    async def start(self) -> None:
        """Spawn instances up to the desired count (the venv must be prepared)."""
        async with self._lock:
            self._check_open()
            self.phase = "running"
            for index in range(1, self.desired + 1):
                inst = self.instances.get(index)
                if inst is None:
                    self._spawn(index)
                elif not inst.alive:
                    inst.start()
        # A service with no instances to change state must still wake its dependents.
        self.notify()

    def fail(self, reason: str) -> None:
        self.error = reason
        self.phase = "failed"
        log.error("%s: %s", self.name, reason)
        self.ctx.logs.sink(self.name, 0).write("corral", reason)
        self.notify()

    def environ(self) -> dict[str, str]:
        env = base_environ()
        env["PYTHONUNBUFFERED"] = "1"  # logs should arrive line by line, not in 8 KiB blocks
        env.update(self.spec.env)
        if self.venv is not None:
            env["VIRTUAL_ENV"] = str(self.venv)
            env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["CORRAL_TOKEN"] = self.ctx.token
        return env

    def _spawn(self, index: int, *, fresh_port: bool = False) -> Instance:
        self._generation += 1
        owner = f"{self.name}.{index}#{self._generation}"
        port: int | None = None
        error = ""
        if self.spec.has_port:
            preferred = self.spec.port + index - 1 if self.spec.port is not None else None
            try:
                if fresh_port:
                    taken = {i.port for i in self.instances.values() if i.port is not None}
                    port = self.ctx.ports.fresh(owner, avoid=taken)
                else:
                    port = self.ctx.ports.assign(owner, preferred, self.spec.auto_port)
            except PortInUse as exc:
                error = str(exc)
        inst = Instance(
            self.spec,
            index,
            port,
            env=self.environ(),
            sink=self.ctx.logs.sink(self.name, index),
            hooks=self.ctx.hooks,
            generation=self._generation,
        )
        inst.port_owner = owner
        if error:
            inst.fail_now(error)
        else:
            inst.start()
        if not fresh_port:
            self.instances[index] = inst
        return inst

    # --- dependencies ----------------------------------------------------------------------------

    def satisfies(self, condition: DependCondition) -> bool | None:
        """True if met, False if it can never be met (without an order), None if not yet."""
        if self.phase in ("failed", "stopped"):  # stopped: removed by a reload, or shutdown
            return False
        insts = list(self.instances.values())
        if condition is DependCondition.STARTED:
            return True if insts or self.desired == 0 else None
        if not insts:
            return True if self.desired == 0 and self.phase == "running" else None
        if condition is DependCondition.COMPLETED:
            if all(i.state is State.COMPLETED for i in insts):
                return True
            if any(i.state in FINAL and i.state is not State.COMPLETED for i in insts):
                return False
            return None
        if all(i.state in UP for i in insts):
            return True
        if any(i.state is State.FAILED for i in insts):
            return False
        return None

    def notify(self) -> None:
        """Wake waiters on this service's condition (called on every instance state change)."""
        self._changed.set()

    async def wait_for(self, condition: DependCondition) -> None:
        while True:
            met = self.satisfies(condition)
            if met:
                return
            if met is False:
                raise DependencyFailed(
                    f"dependency {self.name!r} failed ({self.error or 'see ps'})"
                )
            self._changed.clear()
            await self._changed.wait()

    # --- operations ----------------------------------------------------------------------------

    async def scale(self, count: int) -> None:
        """Change the instance count; scaling down drains the highest indexes first."""
        async with self._lock:
            self._check_open()
            self.desired = count
            if self.phase in ("failed", "pending", "waiting", "building", "held"):
                return
            for index in range(1, count + 1):
                if index not in self.instances:
                    self._spawn(index)
            extra = [self.instances.pop(i) for i in sorted(self.instances) if i > count]
            await self._stop_instances(extra)

    async def stop(self, indexes: Iterable[int] | None = None) -> None:
        """Stop instances (all by default) and keep them stopped until started again."""
        async with self._lock:
            targets = self._pick(indexes)
            await asyncio.gather(*(inst.stop() for inst in targets))

    async def start_instances(self, indexes: Iterable[int] | None = None) -> None:
        """(Re)start stopped or failed instances, in place."""
        async with self._lock:
            self._check_open()
            if self.phase == "failed" and self.error and self.spec.venv:
                self.error = None
                if not await self.prepare():
                    return
            self.phase = "running"
            if indexes is None:
                for index in range(1, self.desired + 1):
                    if index not in self.instances:
                        self._spawn(index)
            for inst in self._pick(indexes):
                if not inst.alive:
                    self._start_in_place(inst)

    def _start_in_place(self, inst: Instance) -> None:
        if inst.port is None and self.spec.has_port:
            # It never got its port (taken by another process): book one again.
            self.ctx.ports.release(inst.port_owner)
            self.instances.pop(inst.index, None)
            self._spawn(inst.index)
        else:
            inst.start()

    def _check_open(self) -> None:
        if self.closed:
            raise SupervisorError(f"{self.name}: the daemon is shutting down")

    async def restart(self, indexes: Iterable[int] | None = None, *, rolling: bool = True) -> None:
        """Restart instances: rolling (replacement first, then drain the old) or all at once."""
        async with self._lock:
            self._check_open()
            targets = self._pick(indexes)
            if not rolling or self.spec.oneshot:
                await asyncio.gather(*(inst.stop() for inst in targets))
                for inst in targets:
                    self._start_in_place(inst)
                return
            # Nothing serves from a dead instance, so there is nothing to roll: start it.
            for inst in targets:
                if not inst.alive:
                    self._start_in_place(inst)
            await self._roll([i for i in targets if i.alive and i.state is not State.STARTING])

    async def _roll(self, targets: list[Instance]) -> None:
        self.phase = "rolling"
        try:
            surge = max(1, self.spec.max_surge)
            for start in range(0, len(targets), surge):
                batch = targets[start : start + surge]
                fresh = [self._spawn(old.index, fresh_port=True) for old in batch]
                self.incoming.extend(fresh)
                states = await asyncio.gather(*(self._await_ready(new) for new in fresh))
                for new in fresh:
                    self.incoming.remove(new)
                if any(state not in UP for state in states):
                    bad = next(n for n, s in zip(fresh, states, strict=True) if s not in UP)
                    why = f"{bad.state.value}: {bad.detail or 'no detail'}"  # before stop()
                    await self._stop_instances(fresh)
                    raise RollFailed(
                        f"{bad.name}: replacement never became ready ({why}); "
                        "roll stopped, old instances still serving"
                    )
                for old, new in zip(batch, fresh, strict=True):
                    self.instances[old.index] = new
                self.retiring.extend(batch)
                await self._stop_instances(batch)
                for old in batch:
                    self.retiring.remove(old)
        finally:
            self.phase = "running"

    async def _await_ready(self, inst: Instance) -> State:
        spec = self.spec.health
        # As long as start-up may take before it counts as a failure, plus a little slack.
        budget = 30.0 if spec is None else spec.start_period + spec.retries * spec.interval + 5.0
        try:
            return await inst.wait_for(UP | {State.UNHEALTHY}, budget)
        except TimeoutError:
            return inst.state

    async def _stop_instances(self, insts: list[Instance]) -> None:
        await asyncio.gather(*(inst.stop() for inst in insts))
        for inst in insts:
            self.ctx.ports.release(inst.port_owner)

    async def shutdown(self) -> None:
        """Stop everything this service runs (daemon exit or service removed)."""
        async with self._lock:
            self.phase = "stopped"
            self.closed = True  # no order may start anything here any more
            await self._stop_instances([*self.instances.values(), *self.incoming, *self.retiring])
        self.notify()

    async def reset(self) -> None:
        """Forget instances that are not running (a reload gives a failed service a fresh start)."""
        async with self._lock:
            dead = [i for i in self.instances.values() if not i.alive]
            await self._stop_instances(dead)
            for inst in dead:
                self.instances.pop(inst.index, None)
            self.error = None
            self.phase = "pending"
        self.notify()

    def _pick(self, indexes: Iterable[int] | None) -> list[Instance]:
        if indexes is None:
            return [self.instances[i] for i in sorted(self.instances)]
        return [self.instances[i] for i in indexes if i in self.instances]

    def describe(self) -> list[dict[str, object]]:
        rows = []
        current = [self.instances[i] for i in sorted(self.instances)]
        for inst in [*current, *self.incoming, *self.retiring]:
            row = inst.describe()
            row["retiring"] = inst in self.retiring
            row["incoming"] = inst in self.incoming
            row["phase"] = self.phase
            rows.append(row)
        if not rows:
            # Not spawned yet (waiting on dependencies, building the venv) or never will be
            # (venv build failed): still one row per desired instance, so ps shows why.
            state = {"failed": "failed", "held": "stopped", "stopped": "stopped"}.get(
                self.phase, "starting"
            )
            rows = [
                {
                    "service": self.name,
                    "index": index,
                    "name": f"{self.name}.{index}",
                    "pid": None,
                    "port": None,
                    "state": state,
                    "ready": False,
                    "detail": self.error or self.phase,
                    "restarts": 0,
                    "uptime_s": 0.0,
                    "last_exit": None,
                    "generation": 0,
                    "retiring": False,
                    "phase": self.phase,
                }
                for index in range(1, self.desired + 1)
            ]
        return rows
