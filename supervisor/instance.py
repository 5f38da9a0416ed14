"""One supervised process: spawn, watch health, restart with backoff, stop its whole tree."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from config.model import ServiceSpec
from config.units import format_duration

from .backoff import CrashHistory, Verdict, decide
from .clock import SYSTEM_CLOCK, Clock
from .logs import LogSink
from .rlimits import Limit
from .run import HOST, Outcome, ProcessRun
from .runas import RunAs
from .scope import Scope, Scopes
from .states import FINAL, UP, State, check

__all__ = ["FINAL", "HOST", "UP", "Instance", "InstanceHooks", "Runtime", "State"]

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class InstanceHooks(Protocol):
    """What an instance tells the layer above (service → daemon → proxy pool)."""

    def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None: ...

    async def drain(self, inst: Instance) -> None: ...

    def internal_error(self, inst: Instance, exc: BaseException) -> None:
        """A bug in Corral hit this instance (logged; the instance carries on or fails)."""
        ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every instance gets from the daemon: where to report, who owns tasks, time."""

    hooks: InstanceHooks
    spawn: Spawn  # the daemon's nursery: an instance's life is one of its tasks
    clock: Clock = SYSTEM_CLOCK
    forced: asyncio.Event = field(default_factory=asyncio.Event)  # second Ctrl-C: no draining
    scopes: Scopes | None = None  # how an instance's escaped processes are found (scope.py)


class Instance:
    """A process of a service, kept alive according to the service's policy.

    The instance owns its state (every change checked against states.TRANSITIONS) and its
    life: a loop of process runs (run.ProcessRun), with the restart decision (backoff.decide)
    between them. It is one task of the daemon's nursery.
    """

    def __init__(
        self,
        spec: ServiceSpec,
        index: int,
        port: int | None,
        *,
        env: Mapping[str, str],
        sink: LogSink,
        runtime: Runtime,
        generation: int = 0,
        run_as: RunAs | None = None,
        rlimits: tuple[Limit, ...] = (),
    ) -> None:
        self.spec = spec
        self.run_as = run_as  # whom its processes run as (None: the daemon's user)
        self.rlimits = rlimits  # setrlimit calls for its processes
        self.index = index
        self.port = port
        self.generation = generation
        self.name = f"{spec.name}.{index}"
        # Unique per incarnation: a rolling replacement of api.1 sits in the pool beside the old one.
        self.key = f"{self.name}@{port}" if port is not None else self.name
        self.state = State.STOPPED
        self.detail = ""
        self.restarts = 0
        self.restart_reasons: dict[str, int] = {}  # why it restarted: {"exit": 2, ...}
        self.last_restart = ""  # the reason of the last restart ("memory_limit: RSS ...")
        self.last_exit: int | None = None
        self.retry_at: float | None = None  # wall clock of the next retry of a failed instance
        self.port_owner = ""  # the PortAllocator booking this instance holds
        self.is_new = True  # until its first state change: events then show no "old" state
        self.runtime = runtime
        self.sink = sink
        self._env = env
        self._clock = runtime.clock
        self._history = CrashHistory(spec.crash_limit, spec.crash_window)
        self._task: asyncio.Task[None] | None = None
        self._run: ProcessRun | None = None
        self.scope: Scope | None = None  # for the current life: its cgroup or token
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # ends a backoff or cool-down early (stop, or start)
        self._retry_requested = False
        self._changed = asyncio.Event()
        self._in_pool = False

    # --- orders from above -------------------------------------------------------------------

    def start(self) -> None:
        """Run the instance's life in a task; a failed or backing-off one is retried now."""
        if self.alive:
            if self.state in (State.FAILED, State.BACKOFF):
                self._history.reset()
                self._retry_requested = True
                self._wake.set()
            return
        self._stop = asyncio.Event()
        self._history.reset()
        # STARTING at once, not when the task first runs: whoever started it and waits for
        # it to get ready must not see the old (settled) state.
        self._set(State.STARTING)
        scopes = self.runtime.scopes
        if scopes is not None:
            owner = self.port_owner or f"{self.name}#{self.generation}"
            self.scope = scopes.for_instance(owner, self.spec.name, self.spec.cgroup)
        self._task = self.runtime.spawn(self._live(), f"instance:{self.name}")

    async def stop(self) -> None:
        """Drain, stop the process tree, and return once everything is reaped."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            # wait(), not await: a life cancelled by an aborting daemon must not raise here.
            await asyncio.wait([self._task])

    def kill_now(self) -> None:
        """SIGKILL the process tree at once, and restart nothing (a second Ctrl-C)."""
        self._stop.set()
        self._wake.set()
        if self._run is not None:
            self._run.kill_now()
        if self.scope is not None:
            self.scope.kill_now()

    async def wait_for(self, states: frozenset[State], timeout: float | None = None) -> State:
        """Wait until the state is one of `states` (or final); return it."""
        async with asyncio.timeout(timeout):
            while not (self.state in states or self.state in FINAL):
                await self._changed.wait()
        return self.state

    def update_spec(self, spec: ServiceSpec) -> None:
        """Settings that apply without a restart (policies, limits, routing) take effect now."""
        self.spec = spec
        self._history.limit = spec.crash_limit
        self._history.window = spec.crash_window

    def freeze(self) -> str | None:
        """Freeze an idle ready instance (idle = "freeze"): out of the pool first, then its
        processes. Returns how ("cgroup" or "SIGSTOP"), or None if it cannot be frozen."""
        run = self._run
        if self.state is not State.READY or run is None or run.pid is None:
            return None
        self._set(State.FROZEN, "idle")  # the pool stops sending it requests
        try:
            how = run.freeze()
        except OSError as exc:
            log.warning(
                "%s (pid=%s): cannot freeze: %s; stopping it instead", self.name, run.pid, exc
            )
            run.thaw()
            self._set(State.READY)
            return None
        log.info("%s frozen (pid=%d, %s)", self.name, run.pid, how)
        self.note(f"idle, frozen ({how})")
        return how

    def thaw(self) -> bool:
        """Let a frozen instance go on and take requests at once (it was ready when frozen;
        its health checks resume an interval later)."""
        run = self._run
        if self.state is not State.FROZEN or run is None:
            return False
        run.thaw()
        self._set(State.READY, "thawed")
        return True

    def observe_memory(self, rss: int) -> None:
        """The sampler's latest RSS of its process tree (for memory_limit)."""
        if self._run is not None:
            self._run.observe_memory(rss, self._clock.now())

    def fail_now(self, reason: str) -> None:
        """Mark an instance that cannot even be started (e.g. its port is taken) as failed."""
        self._set(State.FAILED, reason)

    # --- what others may read ------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Its life runs (a process, or a backoff or cool-down before the next one)."""
        return self._task is not None and not self._task.done()

    @property
    def pid(self) -> int | None:
        return self._run.pid if self._run is not None else None

    @property
    def has_process(self) -> bool:
        return self.pid is not None

    @property
    def started_at(self) -> float | None:
        """Wall clock of the current process's start."""
        return self._run.started_at if self._run is not None and self.pid else None

    @property
    def uptime(self) -> float:
        """Seconds the current process has been running (0 without one)."""
        return self._run.uptime if self._run is not None else 0.0

    @property
    def env(self) -> Mapping[str, str]:
        """The environment its processes start with (before the per-instance variables)."""
        return self._env

    @property
    def routable(self) -> bool:
        """Whether the proxy should send this instance traffic."""
        return self.state is State.READY and self.port is not None

    def retry_note(self) -> str:
        """ "; retry in 10s at 12:03:04" while a failed instance waits for its cool-down."""
        if self.retry_at is None or self.state is not State.FAILED:
            return ""
        seconds = max(0, round(self.retry_at - self._clock.wall()))
        return f"; retry in {format_duration(seconds)} at {time.strftime('%H:%M:%S', time.localtime(self.retry_at))}"

    # --- what its process run reports (run.py) --------------------------------------------------

    @property
    def stop_requested(self) -> asyncio.Event:
        return self._stop

    @property
    def in_pool(self) -> bool:
        return self._in_pool

    def enter(self, state: State, detail: str = "") -> None:
        """A state change seen by the process run (checked against the table)."""
        self._set(state, detail)

    def note(self, detail: str) -> None:
        """What a starting instance waits for: shown by `ps`, not worth an event."""
        self.detail = detail

    # --- the life -----------------------------------------------------------------------------

    def _set(self, state: State, detail: str = "", *, force: bool = False) -> None:
        old = self.state
        if not force:
            check(old, state)
        self.state, self.detail = state, detail
        if state is not State.FAILED:
            self.retry_at = None
        if detail:
            self.sink.write("corral", f"{state.value}: {detail}{self.retry_note()}")
        self.runtime.hooks.state_changed(self, old, state, detail)
        self.is_new = False
        self._in_pool = state is State.READY
        # Wake every wait_for(); they re-check the state.
        self._changed.set()
        self._changed = asyncio.Event()

    def _argv(self) -> list[str]:
        port = "" if self.port is None else str(self.port)
        return [arg.replace("{port}", port) for arg in self.spec.command]

    def _environ(self) -> dict[str, str]:
        env = dict(self._env)
        env["CORRAL_SERVICE"] = self.spec.name
        env["CORRAL_INSTANCE"] = str(self.index)
        if self.port is not None:
            env["PORT"] = str(self.port)
        return env

    async def _live(self) -> None:
        try:
            await self._lifecycle()
        except Exception as exc:
            # A bug of ours between process runs (those inside a run are handled there):
            # report it; no process runs at this point, so none is left behind.
            log.exception("%s: supervisor error", self.name)
            self.runtime.hooks.internal_error(self, exc)
            self._set(State.FAILED, "internal supervisor error (see daemon log)", force=True)
        finally:
            if self.scope is not None:
                self.scope.close()

    async def _lifecycle(self) -> None:
        while not self._stop.is_set():
            if self.state is not State.STARTING:
                self._set(State.STARTING)
            outcome = await self._run_process()
            if outcome.stopped:
                self._set(State.STOPPED)
                return
            decision = decide(
                code=outcome.code,
                cause=outcome.cause,
                policy=self.spec.restart,
                oneshot=self.spec.oneshot,
                history=self._history,
                now=self._clock.now(),
                backoff_initial=self.spec.backoff_initial,
                backoff_max=self.spec.backoff_max,
                transient=outcome.transient,
                start_failed=outcome.start_failed,
                crash_loop=self.spec.crash_loop,
                cooldown_initial=self.spec.cooldown_initial,
                cooldown_max=self.spec.cooldown_max,
                uptime=outcome.uptime,
            )
            if decision.verdict is Verdict.COMPLETED:
                self._set(State.COMPLETED, decision.reason)
                return
            if decision.verdict is Verdict.STOPPED:
                self._set(State.STOPPED, decision.reason)
                return
            if decision.verdict is Verdict.FAILED:
                if decision.retry_in is None:
                    self._set(State.FAILED, decision.reason)
                    return
                # Kubernetes' CrashLoopBackOff: not given up on, retried after a cool-down.
                self.retry_at = self._clock.wall() + decision.retry_in
                self._set(State.FAILED, decision.reason)
                if not await self._pause(decision.retry_in):
                    break
                self._count_restart(outcome.kind, decision.reason)
                continue
            self._set(State.CRASHED, decision.reason)
            self._set(State.BACKOFF, f"restarting in {decision.delay:.2f}s")
            if not await self._pause(decision.delay):
                break
            self._count_restart(outcome.kind, decision.reason)
        self._set(State.STOPPED)

    def _count_restart(self, kind: str, reason: str) -> None:
        self.restarts += 1
        self.restart_reasons[kind] = self.restart_reasons.get(kind, 0) + 1
        self.last_restart = reason

    async def _run_process(self) -> Outcome:
        self._run = ProcessRun(self, self._argv(), self._environ())
        outcome = await self._run.execute()
        self.last_exit = self._run.returncode
        return outcome

    async def _pause(self, seconds: float) -> bool:
        """Wait before the next start; False if a stop order came meanwhile."""
        if not (self._stop.is_set() or self._retry_requested):
            self._wake.clear()
            await self._clock.wait(self._wake, seconds)
        self._retry_requested = False
        return not self._stop.is_set()
