"""Instance logic with real processes and an injected clock: backoff and crash loops in no time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from config.model import CrashLoop, HealthKind, HealthSpec, RestartPolicy, ServiceSpec
from supervisor.errors import IllegalTransition
from supervisor.instance import Instance, Runtime, State
from supervisor.logs import LogHub
from supervisor.process import base_environ

from .conftest import pid_alive
from .fakeclock import FakeClock

PY = sys.executable


class Hooks:
    """Records what an instance reports (a real InstanceHooks, not a mock)."""

    def __init__(self, fail_on: State | None = None) -> None:
        self.changes: list[tuple[State, State, str]] = []
        self.errors: list[BaseException] = []
        self.fail_on = fail_on

    def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None:
        self.changes.append((old, new, detail))
        if new is self.fail_on:
            raise RuntimeError(f"a bug on {new.value}")

    async def drain(self, inst: Instance) -> None:
        return None

    def internal_error(self, inst: Instance, exc: BaseException) -> None:
        self.errors.append(exc)

    def states(self) -> list[State]:
        return [new for _, new, _ in self.changes]


def _spec(tmp_path: Path, code: str, **kw: Any) -> ServiceSpec:
    return ServiceSpec(name="t", command=(PY, "-c", code), cwd=tmp_path, venv=False, **kw)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, spec: ServiceSpec, hooks: Hooks, clock: FakeClock
) -> AsyncIterator[Instance]:
    hub = LogHub(tmp_path / "logs", 1 << 20, 1, 100)
    async with asyncio.timeout(30), asyncio.TaskGroup() as group:
        runtime = Runtime(
            hooks=hooks, spawn=lambda coro, name: group.create_task(coro, name=name), clock=clock
        )
        sink = hub.sink("t", 1)
        inst = Instance(spec, 1, spec.port, env=base_environ(), sink=sink, runtime=runtime)
        try:
            yield inst
        finally:
            await inst.stop()
            hub.close()


async def test_crash_loop_backs_off_then_fails(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "raise SystemExit(3)",
        crash_limit=5,
        backoff_initial=0.5,
        backoff_max=2.0,
        crash_loop=CrashLoop.STOP,
    )
    hooks, clock = Hooks(), FakeClock()
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        assert await inst.wait_for(frozenset({State.FAILED})) is State.FAILED
        # First crash restarts at once, then initial, 2x, 4x (capped at max).
        assert clock.waits == [0.0, 0.5, 1.0, 2.0]
        assert inst.restarts == 4
        assert inst.detail == "exit 3; crashed 5 times in 60s (crash_limit 5)"
        states = hooks.states()
        assert states[0] is State.STARTING
        assert states[states.index(State.CRASHED) + 1] is State.BACKOFF
        assert inst.last_exit == 3


async def test_start_retries_a_failed_instance_with_a_fresh_history(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "raise SystemExit(1)",
        crash_limit=2,
        restart=RestartPolicy.ALWAYS,
        crash_loop=CrashLoop.STOP,
    )
    hooks, clock = Hooks(), FakeClock()
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        await inst.wait_for(frozenset({State.FAILED}))
        failed_once = hooks.states().count(State.FAILED)
        inst.start()
        await inst.wait_for(frozenset({State.STARTING}))
        await inst.wait_for(frozenset({State.FAILED}))
        assert hooks.states().count(State.FAILED) == failed_once + 1
        assert hooks.states().count(State.STARTING) == 4  # two full crash loops of 2


async def test_liveness_failures_restart_and_count_as_crashes(tmp_path: Path) -> None:
    health = HealthSpec(
        kind=HealthKind.EXEC,
        command=(PY, "-c", "raise SystemExit(1)"),
        interval=1.0,
        timeout=1.0,
        retries=1,
    )
    spec = _spec(tmp_path, "import time; time.sleep(60)", health=health, crash_limit=2)
    hooks, clock = Hooks(), FakeClock()
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        assert await inst.wait_for(frozenset({State.FAILED})) is State.FAILED
        assert "liveness check failed" in inst.detail
        assert State.UNHEALTHY in hooks.states() and State.STOPPING in hooks.states()
        assert inst.pid is None


async def test_a_transition_outside_the_table_raises(tmp_path: Path) -> None:
    hooks, clock = Hooks(), FakeClock()
    async with running(tmp_path, _spec(tmp_path, "pass"), hooks, clock) as inst:
        with pytest.raises(IllegalTransition, match="stopped -> ready"):
            inst.enter(State.READY)
        assert inst.state is State.STOPPED and hooks.changes == []


async def test_a_bug_while_the_process_runs_never_leaves_it_running(tmp_path: Path) -> None:
    # The hook raises when the instance turns RUNNING: a supervisor bug mid-run. The process
    # must be killed and reaped before anything else happens, and the bug reported.
    hooks, clock = Hooks(fail_on=State.RUNNING), FakeClock()
    spec = _spec(tmp_path, "import time; time.sleep(60)", crash_limit=1)
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        await inst.wait_for(frozenset({State.RUNNING}))
        await inst.wait_for(frozenset({State.FAILED}))
        assert hooks.errors and "a bug on running" in str(hooks.errors[0])
        assert inst.detail.startswith("internal supervisor error")
        assert inst.pid is None
    started = [
        line
        for line in (tmp_path / "logs" / "t.1.log").read_text().splitlines()
        if "started pid" in line
    ]
    assert started
    first_pid = int(started[0].rsplit("started pid ", 1)[1].split()[0])
    assert not pid_alive(first_pid)


async def test_a_port_never_opened_fails_the_start_after_start_timeout(tmp_path: Path) -> None:
    from supervisor.ports import free_port

    port = free_port()
    spec = _spec(tmp_path, "import time; time.sleep(60)", start_timeout=90.0, port=port)
    hooks, clock = Hooks(), FakeClock()
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        assert await inst.wait_for(frozenset({State.FAILED})) is State.FAILED
        assert inst.detail == f"not ready after 1m30s: port {port} not accepting yet"
        stopping = [d for _, new, d in hooks.changes if new is State.STOPPING]
        assert stopping == [inst.detail]
        assert inst.pid is None


async def test_a_failed_instance_is_retried_after_its_cool_down(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "raise SystemExit(3)",
        crash_limit=2,
        cooldown_initial=10.0,
        cooldown_max=40.0,
        backoff_initial=0.5,
    )
    clock = FakeClock()
    retries: list[float] = []
    four = asyncio.Event()

    class Watch(Hooks):
        def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None:
            super().state_changed(inst, old, new, detail)
            if new is State.FAILED:
                assert inst.retry_at is not None and inst.alive  # not given up on
                assert detail.startswith("exit 3; crashed ")
                retries.append(inst.retry_at - clock.wall())
                if len(retries) == 4:
                    four.set()

    hooks = Watch()
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        await asyncio.wait_for(four.wait(), 20)
    # Cool-downs: 10 s, doubling, capped at 40 s; each one ends in a new start.
    assert retries[:4] == [10.0, 20.0, 40.0, 40.0]
    states = hooks.states()
    after_failed = [b for a, b in itertools.pairwise(states) if a is State.FAILED]
    assert set(after_failed) <= {State.STARTING, State.STOPPED} and State.STARTING in after_failed


async def test_crash_loop_stop_keeps_it_failed_until_started(tmp_path: Path) -> None:
    from config.model import CrashLoop

    spec = _spec(tmp_path, "raise SystemExit(3)", crash_limit=2, crash_loop=CrashLoop.STOP)
    hooks, clock = Hooks(), FakeClock()
    async with running(tmp_path, spec, hooks, clock) as inst:
        inst.start()
        await inst.wait_for(frozenset({State.FAILED}))
        await asyncio.sleep(0.1)
        assert not inst.alive and inst.retry_at is None and inst.state is State.FAILED
