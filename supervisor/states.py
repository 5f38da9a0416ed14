"""Instance states, the table of allowed transitions between them, and service phases.

The table is the specification of an instance's life; `Instance._set` checks every change
against it, so a code path that would, say, mark a stopped instance ready is a test failure
(IllegalTransition) instead of a silent inconsistency in `corral ps` and the proxy pool.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from .errors import IllegalTransition


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RUNNING = "running"  # up, with no port and no health check to say more
    FROZEN = "frozen"  # an idle autoscaled instance, its processes frozen; thawed on demand
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    BACKOFF = "backoff"
    FAILED = "failed"
    COMPLETED = "completed"


# Settled states: nothing will change without an order from outside (a failed instance may
# still be retried after its cool-down, but until then it is settled for `up -d` and for
# dependencies).
FINAL = frozenset({State.STOPPED, State.FAILED, State.COMPLETED})
# States that count as "up" for `depends_on = "healthy"` and for `up -d`.
UP = frozenset({State.READY, State.RUNNING})

# How a process run can end, from any state where a process exists: on its own (crashed, done,
# clean exit, failed for good) or by our order (through STOPPING).
_ENDINGS = frozenset({State.STOPPING, State.CRASHED, State.STOPPED, State.COMPLETED, State.FAILED})

TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType(
    {
        # A new or stopped instance is started, or cannot even be started (its port is taken).
        State.STOPPED: frozenset({State.STARTING, State.FAILED}),
        State.STARTING: frozenset({State.READY, State.RUNNING, State.UNHEALTHY}) | _ENDINGS,
        State.READY: frozenset({State.UNHEALTHY, State.FROZEN}) | _ENDINGS,
        # Thawed by the next request, stopped (thawed first, so it sees its stop signal), or
        # killed while frozen (SIGKILL reaches frozen processes).
        State.FROZEN: frozenset({State.READY}) | _ENDINGS,
        State.UNHEALTHY: frozenset({State.READY}) | _ENDINGS,
        State.RUNNING: _ENDINGS,
        # Stopped by order, or for a liveness failure (a crash) or a start timeout (failed).
        State.STOPPING: frozenset({State.STOPPED, State.CRASHED, State.FAILED}),
        State.CRASHED: frozenset({State.BACKOFF}),
        State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
        # Retried after the cool-down (or at once by `corral start`), or stopped while waiting.
        State.FAILED: frozenset({State.STARTING, State.STOPPED}),
        State.COMPLETED: frozenset({State.STARTING}),
    }
)


def check(old: State, new: State) -> None:
    """Raise IllegalTransition unless the table allows `old` → `new`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"illegal instance state change {old.value} -> {new.value}")


class Phase(enum.StrEnum):
    PENDING = "pending"  # not brought up yet (or reset by a reload)
    WAITING = "waiting"  # for its dependencies
    BUILDING = "building"  # its virtualenv
    RUNNING = "running"
    ROLLING = "rolling"  # a rolling restart is in progress
    FAILED = "failed"  # cannot run: venv build or dependency failed
    HELD = "held"  # stopped before it started; waits for `corral start`
    STOPPED = "stopped"  # shut down: daemon exit, or removed by a reload
