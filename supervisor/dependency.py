"""`depends_on`: whether a service satisfies a condition (a pure function of what it runs),
and waiting until its dependencies do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from config.model import DependCondition

from .errors import DependencyFailed
from .states import FINAL, UP, Phase, State


def satisfies(
    condition: DependCondition, phase: Phase, states: Sequence[State], desired: int
) -> bool | None:
    """True if met, False if it can never be met (without an order), None if not yet.

    `states` are the service's current instances' states (not a roll's extra incarnations).
    """
    if phase in (Phase.FAILED, Phase.STOPPED):  # stopped: removed by a reload, or shutdown
        return False
    if condition is DependCondition.STARTED:
        return True if states or desired == 0 else None
    if not states:
        return True if desired == 0 and phase is Phase.RUNNING else None
    if condition is DependCondition.COMPLETED:
        if all(s is State.COMPLETED for s in states):
            return True
        if any(s in FINAL and s is not State.COMPLETED for s in states):
            return False
        return None
    if all(s in UP for s in states):
        return True
    if any(s is State.FAILED for s in states):
        return False
    return None


class Dependency(Protocol):
    """What a waiting service needs to know of a service it depends on."""

    @property
    def name(self) -> str: ...

    @property
    def error(self) -> str | None: ...

    def satisfies(self, condition: DependCondition) -> bool | None: ...

    async def changed(self) -> None: ...


Lookup = Callable[[str], Dependency | None]


async def wait_for_condition(dep: Dependency, condition: DependCondition) -> None:
    """Return once `dep` meets `condition`; DependencyFailed if it cannot (now)."""
    while True:
        met = dep.satisfies(condition)
        if met:
            return
        if met is False:
            raise DependencyFailed(f"dependency {dep.name!r} failed ({dep.error or 'see ps'})")
        await dep.changed()


async def wait_for_all(conditions: Mapping[str, DependCondition], lookup: Lookup) -> None:
    """Return once every dependency meets its condition; DependencyFailed otherwise."""

    async def one(name: str, condition: DependCondition) -> None:
        dep = lookup(name)
        if dep is None:  # removed by a reload while we waited
            raise DependencyFailed(f"dependency {name!r} no longer exists")
        await wait_for_condition(dep, condition)

    await asyncio.gather(*(one(name, cond) for name, cond in conditions.items()))


async def until_recoverable(conditions: Mapping[str, DependCondition], lookup: Lookup) -> bool:
    """Wait until no dependency is known to fail its condition; False if one is gone."""
    while True:
        deps = [(lookup(name), cond) for name, cond in conditions.items()]
        if any(dep is None for dep, _ in deps):
            return False
        failing = [dep for dep, cond in deps if dep is not None and dep.satisfies(cond) is False]
        if not failing:
            return True
        await failing[0].changed()
