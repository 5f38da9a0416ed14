"""One supervised process: spawn, watch health, restart with backoff, stop its whole tree."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from config.model import ServiceSpec

from . import probe as probes
from .backoff import CrashHistory, Verdict, decide, describe_exit
from .errors import SpawnError
from .logs import LogSink
from .process import descendants, reap_group, spawn, stop_tree
from .states import FINAL, UP, State

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# How long stdout/stderr pumps may run after the process exited (a stray grandchild holding
# the pipe open must not stall the restart).
_PUMP_GRACE = 1.0
# First readiness probes come quickly and slow down to the configured interval: start-up time
# is what users wait on, and an instance that is up should be serving within ~50 ms.
_FIRST_PROBE_DELAY = 0.02
# ... but never further apart than this while starting: on a loaded machine (100 interpreters
# starting on 2 cores) an instance can take seconds, and a probe schedule that had grown to the
# full interval would leave it listening, unused, for up to that long. Refused connects are cheap.
_STARTING_PROBE_MAX = 0.25


class InstanceHooks(Protocol):
    """What an instance tells the layer above (service → daemon → proxy pool)."""

    def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None: ...

    async def drain(self, inst: Instance) -> None: ...


class Instance:
    """A process of a service, kept alive according to the service's policy."""

    def __init__(
        self,
        spec: ServiceSpec,
        index: int,
        port: int | None,
        *,
        env: Mapping[str, str],
        sink: LogSink,
        hooks: InstanceHooks,
        generation: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.index = index
        self.port = port
        self.generation = generation
        self.name = f"{spec.name}.{index}"
        # Unique per incarnation: a rolling replacement of api.1 sits in the pool beside the old one.
        self.key = f"{self.name}@{port}" if port is not None else self.name
        self.state = State.STOPPED
        self.detail = ""
        self.pid: int | None = None
        self.restarts = 0
        self.started_at: float | None = None  # wall clock of the current process's start
        self.last_exit: int | None = None
        self._env = env
        self._sink = sink
        self._hooks = hooks
        self._clock = clock
        self._history = CrashHistory(spec.crash_limit, spec.crash_window)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Condition()
        self._in_pool = False
        self.port_owner = ""  # the PortAllocator booking this instance holds
        self.is_new = True  # until its first state change: events then show no "old" state
        self._cause = ""  # why the last run ended, when the exit code alone would mislead
        self._proc: asyncio.subprocess.Process | None = None

    # --- orders from above -------------------------------------------------------------------

    def start(self) -> None:
        """Run the instance's life in a task; no-op if it is already alive."""
        if self._task is not None and not self._task.done():
            return
        self._stop = asyncio.Event()
        self._history.reset()
        self._task = asyncio.create_task(self._live(), name=f"instance:{self.name}")

    async def stop(self) -> None:
        """Drain, stop the process tree, and return once everything is reaped."""
        self._stop.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def wait_for(self, states: frozenset[State], timeout: float | None = None) -> State:
        """Wait until the state is one of `states` (or final); return it."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.state in states or self.state in FINAL)
        return self.state

    def update_spec(self, spec: ServiceSpec) -> None:
        """Settings that apply without a restart (policies, limits, routing) take effect now."""
        self.spec = spec
        self._history.limit = spec.crash_limit
        self._history.window = spec.crash_window

    def fail_now(self, reason: str) -> None:
        """Mark an instance that cannot even be started (e.g. its port is taken) as failed."""
        self._set(State.FAILED, reason)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def routable(self) -> bool:
        """Whether the proxy should send this instance traffic."""
        return self.state is State.READY and self.port is not None

    # --- the life -----------------------------------------------------------------------------

    def _set(self, state: State, detail: str = "") -> None:
        old, self.state, self.detail = self.state, state, detail
        if old is state and not detail:
            return
        if detail:
            self._sink.write("corral", f"{state.value}: {detail}")
        self._hooks.state_changed(self, old, state, detail)
        self.is_new = False
        self._in_pool = state is State.READY
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

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
        except Exception:
            log.exception("%s: supervisor error", self.name)
            self._set(State.FAILED, "internal supervisor error (see daemon log)")
        finally:
            # Whatever went wrong above, a FAILED or abandoned instance must not leave its
            # process running (it would hold the port, unsupervised).
            proc = self._proc
            if proc is not None and proc.returncode is None:
                reap_group(proc.pid, descendants(proc.pid))
                self.pid = None

    async def _lifecycle(self) -> None:
        while not self._stop.is_set():
            self._set(State.STARTING)
            stopped, code = await self._run_once()
            if stopped:
                self._set(State.STOPPED)
                return
            decision = decide(
                code=code,
                cause=self._cause,
                policy=self.spec.restart,
                oneshot=self.spec.oneshot,
                history=self._history,
                now=self._clock(),
                backoff_initial=self.spec.backoff_initial,
                backoff_max=self.spec.backoff_max,
            )
            if decision.verdict is Verdict.COMPLETED:
                self._set(State.COMPLETED, decision.reason)
                return
            if decision.verdict is Verdict.STOPPED:
                self._set(State.STOPPED, decision.reason)
                return
            if decision.verdict is Verdict.FAILED:
                self._set(State.FAILED, decision.reason)
                return
            self._set(State.CRASHED, decision.reason)
            self._set(State.BACKOFF, f"restarting in {decision.delay:.2f}s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(decision.delay):
                    await self._stop.wait()
            self.restarts += 1
        self._set(State.STOPPED)

    async def _run_once(self) -> tuple[bool, int | None]:
        """Run the process once: (stopped by order, exit code or None if it could not start)."""
        env = self._environ()
        try:
            proc = await spawn(self._argv(), cwd=self.spec.cwd, env=env)
        except SpawnError as exc:
            self._sink.write("corral", str(exc))
            log.error("%s: %s", self.name, exc)
            return False, None
        self._proc = proc
        self.pid = proc.pid
        self.started_at = time.time()
        log.info("%s started (pid=%d, port=%s)", self.name, proc.pid, self.port)
        self._sink.write("corral", f"started pid {proc.pid}" + _port_note(self.port))
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(self._sink.pump("stdout", proc.stdout)),
            asyncio.create_task(self._sink.pump("stderr", proc.stderr)),
        ]
        liveness_failed = asyncio.Event()
        watcher = asyncio.create_task(self._watch_health(liveness_failed, env))
        watcher.add_done_callback(self._health_done)
        exited = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(self._stop.wait())
        restart = asyncio.create_task(liveness_failed.wait())
        try:
            await asyncio.wait({exited, stop, restart}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, stop, restart):
                task.cancel()
        stopped = False
        self._cause = ""
        ended_itself = exited.done()
        if ended_itself:
            # The leader is gone; whatever it left in its group (or below it) goes too, or a
            # stray worker would keep the port and the restart would fail.
            reap_group(proc.pid, descendants(proc.pid))
            log.warning(
                "%s (pid=%d) exited: %s", self.name, proc.pid, describe_exit(proc.returncode)
            )
        else:
            stopped = self._stop.is_set()
            was_routable = self._in_pool
            self._set(State.STOPPING, "" if stopped else "liveness check failed; restarting")
            if was_routable:
                await self._hooks.drain(self)
            await stop_tree(proc, self.spec.stop_signal, self.spec.stop_timeout, name=self.name)
            exited.cancel()
        self.last_exit = proc.returncode
        self.pid = None
        await _finish(pumps)
        if not (stopped or ended_itself):
            # A liveness restart counts as a crash for backoff and crash-loop accounting.
            self._cause = "liveness check failed"
            return False, proc.returncode if proc.returncode else 1
        return stopped, proc.returncode

    def _health_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: health watcher failed: %r", self.name, task.exception())

    async def _watch_health(self, liveness_failed: asyncio.Event, env: dict[str, str]) -> None:
        spec = self.spec.health
        if spec is None:
            if self.port is None:
                self._set(State.RUNNING)
                return
            delay = _FIRST_PROBE_DELAY
            while not await probes.port_open(HOST, self.port, 1.0):
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, _STARTING_PROBE_MAX)
            self._set(State.READY)
            return
        if self.port is not None and spec.command:
            port = str(self.port)
            spec = dataclasses.replace(
                spec, command=tuple(arg.replace("{port}", port) for arg in spec.command)
            )
        started = self._clock()
        startup_deadline = started + spec.start_period + spec.retries * spec.interval
        failures = 0
        delay = _FIRST_PROBE_DELAY
        while True:
            result = await probes.probe(spec, HOST, self.port, cwd=self.spec.cwd, env=env)
            now = self._clock()
            if result.ok:
                failures = 0
                if self.state is not State.READY:
                    self._set(State.READY, "" if self.state is State.STARTING else result.detail)
            elif self.state is State.STARTING:
                if now >= startup_deadline:
                    failures = spec.retries
                    self._set(State.UNHEALTHY, f"not ready after start-up: {result.detail}")
            else:
                failures += 1
                if self.state is State.READY and failures >= spec.retries:
                    self._set(State.UNHEALTHY, result.detail)
                elif (
                    self.state is State.UNHEALTHY
                    and spec.restart_unhealthy
                    and failures >= 2 * spec.retries
                ):
                    liveness_failed.set()
                    return
            if self.state is State.STARTING:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, spec.interval, _STARTING_PROBE_MAX)
            else:
                await asyncio.sleep(spec.interval)

    # --- reporting ------------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        uptime = time.time() - self.started_at if self.started_at and self.pid else 0.0
        return {
            "service": self.spec.name,
            "index": self.index,
            "name": self.name,
            "pid": self.pid,
            "port": self.port,
            "state": self.state.value,
            "ready": self.state in UP,
            "detail": self.detail,
            "restarts": self.restarts,
            "uptime_s": round(uptime, 3),
            "last_exit": self.last_exit,
            "generation": self.generation,
        }


def _port_note(port: int | None) -> str:
    return "" if port is None else f" on port {port}"


async def _finish(pumps: list[asyncio.Task[None]]) -> None:
    done, pending = await asyncio.wait(pumps, timeout=_PUMP_GRACE)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            log.warning("log pump failed: %r", task.exception())
