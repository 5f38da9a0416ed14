"""Service logic without a daemon: real processes, an injected clock, a TaskGroup as nursery."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from config.model import DependCondition, Roll, ServiceSpec
from supervisor.dependency import satisfies
from supervisor.instance import Instance, Runtime, State
from supervisor.logs import LogHub
from supervisor.ports import PortAllocator, free_port
from supervisor.service import Phase, Service, ServiceContext
from supervisor.venv import VenvBuilder

from .conftest import APPS, pid_alive
from .fakeclock import FakeClock

PY = sys.executable


class Hooks:
    """Records what the service and its instances report."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, int | None, State]] = []  # (generation, pid, new)
        self.service_events: list[tuple[str, str]] = []

    def state_changed(self, inst: Instance, old: State, new: State, detail: str) -> None:
        self.changes.append((inst.generation, inst.pid, new))

    async def drain(self, inst: Instance) -> None:
        return None

    def internal_error(self, inst: Instance, exc: BaseException) -> None:
        raise AssertionError(f"supervisor error in {inst.name}: {exc!r}")

    def service_event(self, service: Service, new: str, detail: str) -> None:
        self.service_events.append((new, detail))


@contextlib.asynccontextmanager
async def service_of(tmp_path: Path, **spec: Any) -> AsyncIterator[tuple[Service, Hooks]]:
    hooks, hub = Hooks(), LogHub(tmp_path / "logs", 1 << 20, 1, 100)
    async with asyncio.timeout(30), asyncio.TaskGroup() as group:
        ctx = ServiceContext(
            logs=hub,
            ports=PortAllocator(),
            venvs=VenvBuilder(tmp_path / "venvs"),
            hooks=hooks,
            token="t",
            runtime=Runtime(
                hooks=hooks,
                spawn=lambda coro, name: group.create_task(coro, name=name),
                clock=FakeClock(),
            ),
            lookup=lambda name: None,
        )
        service = Service(ServiceSpec(name="s", cwd=tmp_path, venv=False, **spec), ctx)
        try:
            yield service, hooks
        finally:
            await service.shutdown()
            hub.close()


async def _all(service: Service, state: State) -> None:
    await asyncio.gather(*(i.wait_for(frozenset({state})) for i in service.instances.values()))


async def test_scale_up_then_down_stops_the_highest_indexes(tmp_path: Path) -> None:
    sleeper = (PY, "-c", "import time; time.sleep(600)")
    async with service_of(tmp_path, command=sleeper, instances=1, min_uptime=0.0) as (svc, _):
        await svc.start()
        assert svc.phase is Phase.RUNNING
        await svc.scale(3)
        await _all(svc, State.RUNNING)
        pids = {i: inst.pid for i, inst in svc.instances.items()}
        await svc.scale(1)
        assert list(svc.instances) == [1] and svc.desired == 1
        assert not pid_alive(pids[2]) and not pid_alive(pids[3])  # type: ignore[arg-type]
        assert svc.instances[1].pid == pids[1]


async def _rolled(tmp_path: Path, roll: Roll) -> list[tuple[int, int | None, State]]:
    web = (PY, str(APPS / "web.py"))
    # Fake time races past real start-ups: no start timeout for this one.
    spec = {"command": web, "port": free_port(), "roll": roll, "start_timeout": 1e9}
    async with service_of(tmp_path, **spec) as (svc, hooks):
        await svc.start()
        await _all(svc, State.READY)
        old = svc.instances[1]
        assert old.state is State.READY, old.detail
        hooks.changes.clear()
        await svc.restart()
        assert svc.instances[1] is not old and svc.instances[1].state is State.READY
        if roll is Roll.IN_PLACE:
            assert svc.instances[1].port == old.port
        else:
            assert svc.instances[1].port != old.port
        return hooks.changes


async def test_in_place_stops_the_old_one_before_the_new_one_starts(tmp_path: Path) -> None:
    changes = _pairs(await _rolled(tmp_path, Roll.IN_PLACE))
    assert changes.index(("old", State.STOPPED)) < changes.index(("new", State.STARTING))


async def test_surge_has_the_new_one_ready_before_the_old_one_stops(tmp_path: Path) -> None:
    changes = _pairs(await _rolled(tmp_path, Roll.SURGE))
    assert changes.index(("new", State.READY)) < changes.index(("old", State.STOPPING))


def _pairs(changes: list[tuple[int, int | None, State]]) -> list[tuple[str, State]]:
    first = min(generation for generation, _, _ in changes)
    return [("old" if g == first else "new", state) for g, _, state in changes]


def test_dependency_conditions_are_a_pure_function() -> None:
    healthy, started, done = (
        DependCondition.HEALTHY,
        DependCondition.STARTED,
        DependCondition.COMPLETED,
    )
    up = [State.READY, State.RUNNING]
    assert satisfies(healthy, Phase.RUNNING, up, 2) is True
    assert satisfies(healthy, Phase.RUNNING, [State.READY, State.STARTING], 2) is None
    assert satisfies(healthy, Phase.RUNNING, [State.READY, State.FAILED], 2) is False
    assert satisfies(started, Phase.WAITING, [], 1) is None
    assert satisfies(started, Phase.RUNNING, [State.STARTING], 1) is True
    assert satisfies(started, Phase.RUNNING, [], 0) is True  # scaled to zero counts as started
    assert satisfies(healthy, Phase.RUNNING, [], 0) is True
    assert satisfies(healthy, Phase.WAITING, [], 0) is None  # not brought up yet
    assert satisfies(done, Phase.RUNNING, [State.COMPLETED], 1) is True
    assert satisfies(done, Phase.RUNNING, [State.FAILED], 1) is False
    assert satisfies(done, Phase.RUNNING, [State.RUNNING], 1) is None
    for phase in (Phase.FAILED, Phase.STOPPED):  # a failed or removed dependency never is
        assert satisfies(started, phase, up, 2) is False
