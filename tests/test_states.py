"""The instance transition table: complete, consistent, and enforced."""

from __future__ import annotations

import pytest

from supervisor.errors import IllegalTransition
from supervisor.states import FINAL, TRANSITIONS, UP, State, check


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_a_new_instance() -> None:
    assert _reachable(State.STOPPED) == set(State)


def test_every_state_can_be_stopped_eventually() -> None:
    # No trap: whatever an instance is doing, `corral stop` can bring it to STOPPED.
    for state in State:
        assert State.STOPPED in _reachable(state) or state is State.STOPPED, state


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.STARTING),
        (State.STARTING, State.READY),
        (State.STARTING, State.RUNNING),
        (State.READY, State.UNHEALTHY),
        (State.UNHEALTHY, State.READY),
        (State.READY, State.STOPPING),
        (State.STOPPING, State.STOPPED),
        (State.STOPPING, State.CRASHED),  # liveness restart
        (State.STARTING, State.CRASHED),
        (State.CRASHED, State.BACKOFF),
        (State.BACKOFF, State.STARTING),
        (State.BACKOFF, State.STOPPED),
        (State.FAILED, State.STARTING),  # retried after the cool-down
        (State.COMPLETED, State.STARTING),
        (State.STOPPED, State.FAILED),  # its port is taken
        (State.READY, State.FROZEN),  # idle = "freeze"
        (State.FROZEN, State.READY),  # thawed by a request
        (State.FROZEN, State.STOPPING),  # thawed, then stopped
        (State.FROZEN, State.CRASHED),  # SIGKILLed while frozen
    ],
)
def test_allowed(old: State, new: State) -> None:
    check(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.READY),  # never ready without starting
        (State.STOPPED, State.STOPPING),
        (State.CRASHED, State.STARTING),  # always through backoff
        (State.BACKOFF, State.READY),
        (State.RUNNING, State.READY),  # a portless instance never becomes "ready"
        (State.READY, State.RUNNING),
        (State.READY, State.READY),  # no self transitions: a detail is not a state change
        (State.COMPLETED, State.STOPPED),
        (State.STOPPING, State.READY),
        (State.FAILED, State.READY),
        (State.STARTING, State.FROZEN),  # only a ready (idle) instance is frozen
        (State.UNHEALTHY, State.FROZEN),
        (State.FROZEN, State.UNHEALTHY),  # no probes while frozen
    ],
)
def test_forbidden(old: State, new: State) -> None:
    with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
        check(old, new)


def test_an_illegal_transition_is_a_bug_not_a_user_error() -> None:
    from supervisor.errors import SupervisorError

    assert issubclass(IllegalTransition, AssertionError)
    assert not issubclass(IllegalTransition, SupervisorError)


def test_settled_and_up_states() -> None:
    assert UP == {State.READY, State.RUNNING}
    assert FINAL == {State.STOPPED, State.FAILED, State.COMPLETED}
    assert not UP & FINAL
