"""One process of an instance, from spawn until it is reaped: output, health watch, stop.

The run owns the process and the tasks that serve it (two output pumps, the exit wait, the
health watch), all in a TaskGroup of its own that ends with the process. It reports state
changes through its instance (`Instance.enter`), which owns the state and checks the
transition table, and returns how the process ended; what happens next (restart, backoff,
failed) is the instance's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from config.model import HealthKind, HealthSpec
from config.units import format_duration

from . import probe as probes
from .backoff import describe_exit
from .errors import SpawnError
from .freezer import Freezer
from .health import COLD_START_PROBE, STARTING_PROBE_MAX, Action, HealthTracker
from .memory import MemoryWatch
from .process import descendants, reap_group, spawn, stop_tree
from .states import State

if TYPE_CHECKING:
    from .instance import Instance

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# How long stdout/stderr pumps may run after the process exited (a stray grandchild holding
# the pipe open must not stall the restart).
_PUMP_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of the process ended."""

    stopped: bool = False  # by our order
    code: int | None = None  # exit status; None: it never started
    cause: str = ""  # why, when the exit status alone would mislead
    transient: bool = False  # could not start for a reason of the daemon's (no fds left)
    start_failed: bool = False  # never ready within start_timeout
    uptime: float = 0.0
    kind: str = "exit"  # why it ended, for restart counts: exit, liveness, memory_limit, ...


@dataclass(frozen=True, slots=True)
class _StopFor:
    """The health watch asks for the process to be stopped."""

    detail: str
    start_failed: bool
    kind: str = "liveness"


class ProcessRun:
    """Spawns one process for `inst` and supervises it until it is gone."""

    def __init__(self, inst: Instance, argv: list[str], env: dict[str, str]) -> None:
        self._inst = inst
        self._argv = argv
        self._env = env
        self._clock = inst.runtime.clock
        self._proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0  # wall clock
        self._started = 0.0  # monotonic
        self._freezer: Freezer | None = None
        self._thawed = asyncio.Event()  # cleared while frozen: the health watch waits on it
        self._thawed.set()
        self._freezes = 0  # a probe out across a freeze means nothing
        spec = inst.spec
        self._memory = (
            MemoryWatch(spec.memory_limit, spec.memory_grace) if spec.memory_limit else None
        )
        self._over_memory: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int | None:
        """The process's pid while it runs (until reaped)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def uptime(self) -> float:
        return self._clock.now() - self._started if self.pid is not None else 0.0

    def freeze(self) -> str:
        """Freeze the process tree (idle = "freeze"); returns how. OSError if it cannot."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            raise ProcessLookupError(f"{self._inst.name} has no process to freeze")
        if self._freezer is None:
            scope = self._inst.scope
            self._freezer = Freezer(proc.pid, scope.cgroup if scope is not None else None)
        self._freezes += 1
        self._thawed.clear()
        return self._freezer.freeze()

    def thaw(self) -> None:
        """Let a frozen process tree go on (a no-op if it is not frozen)."""
        if self._freezer is not None:
            self._freezer.thaw()
        self._thawed.set()

    def observe_memory(self, rss: int, now: float) -> None:
        """A sample of the tree's RSS (memory_limit); past its grace, the run restarts."""
        if self._memory is None or self.pid is None or self._over_memory.done():
            return
        reason = self._memory.observe(rss, now)
        if reason is not None:
            self._over_memory.set_result(reason)

    def kill_now(self) -> None:
        """SIGKILL the whole tree, synchronously (no time for a graceful stop)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            reap_group(proc.pid, descendants(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if self._inst.scope is not None:
                self._inst.scope.kill_now()

    async def execute(self) -> Outcome:
        """Run the process once and say how it ended."""
        inst = self._inst
        scope = inst.scope
        if scope is not None:
            self._env.update(scope.environ())
        try:
            proc = await spawn(
                self._argv,
                cwd=inst.spec.cwd,
                env=self._env,
                cgroup_procs=scope.procs_file if scope is not None else None,
                rlimits=inst.rlimits,
                run_as=inst.run_as,
            )
        except SpawnError as exc:
            inst.sink.write("corral", str(exc))
            log.error("%s: %s", inst.name, exc)
            return Outcome(code=None, cause=str(exc), transient=exc.transient, kind="spawn")
        self._proc = proc
        if scope is not None:
            scope.adopt(proc.pid)
        self.started_at = self._clock.wall()
        self._started = self._clock.now()
        log.info("%s started (pid=%d, port=%s)", inst.name, proc.pid, inst.port)
        inst.sink.write("corral", f"started pid {proc.pid}" + _port_note(inst.port))
        try:
            return await self._supervise(proc)
        except Exception as exc:
            # A bug of ours while the process runs. The process must not outlive our
            # knowledge of it: kill it, then treat the run as a crash (backoff, crash limit).
            log.exception("%s: supervisor error (pid=%d)", inst.name, proc.pid)
            inst.runtime.hooks.internal_error(inst, _unwrap(exc))
            await self._kill()
            return Outcome(code=proc.returncode, cause="internal supervisor error (see daemon log)")
        finally:
            # Cancelled (the daemon is aborting): no time for a graceful stop, no orphan either.
            self.kill_now()

    async def _supervise(self, proc: asyncio.subprocess.Process) -> Outcome:
        inst = self._inst
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.TaskGroup() as run:
            pumps = [
                run.create_task(self._pump("stdout", proc.stdout), name=f"{inst.name}:stdout"),
                run.create_task(self._pump("stderr", proc.stderr), name=f"{inst.name}:stderr"),
            ]
            exited = run.create_task(proc.wait(), name=f"{inst.name}:wait")
            watch = run.create_task(self._watch(), name=f"{inst.name}:health")
            ordered = run.create_task(inst.stop_requested.wait(), name=f"{inst.name}:stop")
            memory = run.create_task(self._memory_exceeded(), name=f"{inst.name}:memory")
            await asyncio.wait(
                {exited, watch, ordered, memory}, return_when=asyncio.FIRST_COMPLETED
            )
            stop_for = watch.result() if watch.done() else None
            if stop_for is None and memory.done():
                stop_for = memory.result()
            watch.cancel()
            ordered.cancel()
            memory.cancel()
            uptime = self.uptime
            if inst.stop_requested.is_set() or not exited.done():
                outcome = await self._stop(proc, stop_for)
            else:
                # The leader is gone; whatever it left in its group (or below it) goes too, or
                # a stray worker would keep the port and the restart would fail.
                reap_group(proc.pid, descendants(proc.pid))
                await self._sweep(grace=0.0)
                how = describe_exit(proc.returncode)
                if proc.returncode == 0:
                    log.info("%s (pid=%d) exited: %s", inst.name, proc.pid, how)
                else:
                    log.warning("%s (pid=%d) exited: %s", inst.name, proc.pid, how)
                outcome = Outcome(code=proc.returncode)
            _, pending = await asyncio.wait(pumps, timeout=_PUMP_GRACE)
            for task in pending:
                task.cancel()
        return dataclasses.replace(outcome, uptime=uptime)

    async def _stop(self, proc: asyncio.subprocess.Process, stop_for: _StopFor | None) -> Outcome:
        """Stop the process, by order or for the health watch."""
        inst = self._inst
        ordered = inst.stop_requested.is_set() or stop_for is None
        was_routable = inst.in_pool
        inst.enter(State.STOPPING, "" if ordered or stop_for is None else stop_for.detail)
        # A frozen process would not see its stop signal until thawed (only SIGKILL reaches it).
        self.thaw()
        if was_routable:
            await self._drain()
        scope = inst.scope
        began = self._clock.now()
        await stop_tree(
            proc,
            inst.spec.stop_signal,
            inst.spec.stop_timeout,
            name=inst.name,
            also=scope.signal if scope is not None else None,
        )
        # What escaped the tree (double fork + setsid): in the cgroup, already signalled, it
        # gets the rest of stop_timeout; found by its token, a short grace after SIGTERM.
        left = max(0.0, inst.spec.stop_timeout - (self._clock.now() - began))
        await self._sweep(grace=left if scope is not None and scope.cgroup else min(left, 1.0))
        if ordered or stop_for is None:
            return Outcome(stopped=True, code=proc.returncode)
        if stop_for.start_failed:
            return Outcome(
                code=proc.returncode, cause=stop_for.detail, start_failed=True, kind="start_timeout"
            )
        # A liveness or memory_limit restart counts as a crash for backoff and crash loops.
        cause = "liveness check failed" if stop_for.kind == "liveness" else stop_for.detail
        return Outcome(code=proc.returncode or 1, cause=cause, kind=stop_for.kind)

    async def _memory_exceeded(self) -> _StopFor:
        reason = await asyncio.shield(self._over_memory)
        log.warning("%s (pid=%s) restarting: %s", self._inst.name, self.pid, reason)
        return _StopFor(reason, start_failed=False, kind="memory_limit")

    async def _sweep(self, grace: float) -> None:
        if self._inst.scope is not None:
            await self._inst.scope.sweep(grace)

    async def _drain(self) -> None:
        """Out of the proxy pool, in-flight requests finish (cut short by a forced stop)."""
        rt = self._inst.runtime
        async with asyncio.TaskGroup() as both:
            drain = both.create_task(rt.hooks.drain(self._inst), name="drain")
            forced = both.create_task(rt.forced.wait(), name="forced")
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            drain.cancel()
            forced.cancel()

    async def _kill(self) -> None:
        """SIGKILL the process tree and wait until the process is reaped."""
        self.kill_now()
        if self._proc is not None:
            await self._proc.wait()

    async def _pump(self, stream: str, reader: asyncio.StreamReader) -> None:
        try:
            await self._inst.sink.pump(stream, reader)
        except Exception as exc:  # a broken pipe of the child's: its output is lost, not us
            log.warning("%s: %s log pump failed: %r", self._inst.name, stream, exc)

    async def _watch(self) -> _StopFor:
        """Readiness and liveness of the running process; returns when it must be stopped."""
        inst = self._inst
        spec = inst.spec.health
        timeout = inst.spec.start_timeout
        if spec is None and inst.port is None:
            # Nothing to probe: "running" once it has stayed up for min_uptime, so that a
            # program that crashes 100 ms after start never looks up (nor `up -d` settled).
            wait = inst.spec.min_uptime
            if wait > 0:
                inst.note(f"counts as running after {format_duration(wait)} up (min_uptime)")
                await self._clock.sleep(wait)
            inst.enter(State.RUNNING)
            return await _forever()
        # Requests wait for an autoscaled instance that starts (at zero, or in a burst).
        pace = COLD_START_PROBE if inst.spec.scale is not None else STARTING_PROBE_MAX
        if spec is None:
            assert inst.port is not None
            tracker = HealthTracker.for_port(
                inst.port, started=self._started, start_timeout=timeout, pace_max=pace
            )
        else:
            if inst.port is not None and spec.command:
                port = str(inst.port)
                spec = dataclasses.replace(
                    spec, command=tuple(arg.replace("{port}", port) for arg in spec.command)
                )
            tracker = HealthTracker.for_check(
                spec,
                started=self._started,
                start_timeout=timeout,
                what=_check_name(spec),
                pace_max=pace,
            )
        while True:
            await self._thawed.wait()  # no probes while frozen
            freezes = self._freezes
            if spec is None:
                assert inst.port is not None
                result = await probes.probe_port(HOST, inst.port, 1.0)
            else:
                result = await probes.probe(spec, HOST, inst.port, cwd=inst.spec.cwd, env=self._env)
            if freezes != self._freezes:
                # Frozen while the probe was out: its failure says nothing. Probe again a
                # whole interval after the thaw.
                await self._thawed.wait()
                await self._clock.sleep(tracker.interval)
                continue
            seen = tracker.observe(result, self._clock.now())
            if seen.state is not None:
                inst.enter(seen.state, seen.detail)
            elif seen.detail:
                inst.note(seen.detail)  # what it waits for: shown by ps, not an event
            if seen.action is not Action.NONE:
                return _StopFor(seen.detail, start_failed=seen.action is Action.FAIL)
            if seen.next_probe is None:
                return await _forever()
            await self._clock.sleep(seen.next_probe)


def _unwrap(exc: Exception) -> Exception:
    # The run's TaskGroup wraps what its tasks raise; one error is reported as itself.
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _forever() -> _StopFor:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _check_name(spec: HealthSpec) -> str:
    if spec.kind is HealthKind.HTTP:
        return f"http {spec.path}"
    if spec.kind is HealthKind.TCP:
        return "tcp check"
    return "exec check"


def _port_note(port: int | None) -> str:
    return "" if port is None else f" on port {port}"
