"""Whether a service satisfies a `depends_on` condition: a pure function of what it runs."""

from __future__ import annotations

from collections.abc import Sequence

from config.model import DependCondition

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
