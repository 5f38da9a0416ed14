"""The health tracker is pure: probe results and times in, transitions out, no event loop."""

from __future__ import annotations

import pytest

from config.model import HealthKind, HealthSpec
from supervisor.health import (
    COLD_START_PROBE,
    FIRST_PROBE_DELAY,
    STARTING_PROBE_MAX,
    Action,
    HealthTracker,
)
from supervisor.probe import ProbeResult
from supervisor.states import State

OK = ProbeResult(True, "HTTP 200")
REFUSED = ProbeResult(False, "connection refused", refused=True)
BAD = ProbeResult(False, "HTTP 503")
NO_FDS = ProbeResult(False, "cannot probe: Too many open files (in the daemon)", conclusive=False)

SPEC = HealthSpec(kind=HealthKind.HTTP, interval=2.0, retries=3, start_period=1.0)


def _check(**kw: float) -> HealthTracker:
    return HealthTracker.for_check(SPEC, started=0.0, what="http /healthz", **kw)


def test_port_probes_speed_up_start_then_ready_stops_probing() -> None:
    t = HealthTracker.for_port(8001, started=0.0, start_timeout=60.0)
    delays = [t.observe(REFUSED, now=0.1 * i).next_probe for i in range(12)]
    assert delays[0] == FIRST_PROBE_DELAY
    assert delays[1] == pytest.approx(FIRST_PROBE_DELAY * 1.5)
    assert max(d for d in delays if d is not None) == STARTING_PROBE_MAX
    waiting = t.observe(REFUSED, now=2.0)
    assert waiting.state is None and waiting.detail == "port 8001 not accepting yet"
    ready = t.observe(ProbeResult(True, "port open"), now=2.1)
    assert ready.state is State.READY and ready.detail == ""
    assert ready.next_probe is None  # no liveness for the bare port check


def test_a_cold_start_is_probed_every_few_milliseconds() -> None:
    # Requests wait for an autoscaled instance: no growing schedule, a probe every 10 ms.
    for t in (
        HealthTracker.for_port(8001, started=0.0, pace_max=COLD_START_PROBE),
        _check(pace_max=COLD_START_PROBE),
    ):
        delays = [t.observe(REFUSED, now=0.01 * i).next_probe for i in range(50)]
        assert set(delays) == {COLD_START_PROBE}
        assert t.observe(OK, now=0.5).state is State.READY


def test_port_that_never_opens_fails_the_start_at_the_timeout() -> None:
    t = HealthTracker.for_port(8001, started=10.0, start_timeout=60.0)
    assert t.observe(REFUSED, now=69.9).action is Action.NONE
    failed = t.observe(REFUSED, now=70.0)
    assert failed.action is Action.FAIL
    assert failed.detail == "not ready after 1m: port 8001 not accepting yet"
    assert failed.next_probe is None


def test_failures_in_the_grace_do_not_count_then_unhealthy_then_liveness_restart() -> None:
    t = _check()  # grace: start_period 1 + 3 retries x 2s interval = 7s
    for now in (0.1, 3.0, 6.9):
        seen = t.observe(BAD, now)
        assert seen.state is None and seen.detail == "http /healthz not passing yet: HTTP 503"
    seen = t.observe(BAD, now=7.0)
    assert (seen.state, seen.detail) == (State.UNHEALTHY, "not ready after start-up: HTTP 503")
    assert seen.next_probe == SPEC.interval
    # Another `retries` failures: the liveness check restarts it.
    assert t.observe(BAD, 9.0).action is Action.NONE
    assert t.observe(BAD, 11.0).action is Action.NONE
    restart = t.observe(BAD, 13.0)
    assert restart.action is Action.RESTART and restart.next_probe is None


def test_a_port_that_still_refuses_is_starting_not_unhealthy() -> None:
    # On a loaded machine an interpreter may take longer than the grace to bind: that is a
    # slow start (bounded by start_timeout), not a failing health check.
    t = _check(start_timeout=60.0)
    for now in (1.0, 7.0, 20.0, 59.0):
        seen = t.observe(REFUSED, now)
        assert seen.state is None and seen.action is Action.NONE
        assert seen.detail == "http /healthz not passing yet: connection refused"
    assert t.observe(OK, 59.5).state is State.READY


def test_ready_then_unhealthy_after_retries_then_ready_again() -> None:
    t = _check()
    assert t.observe(OK, 0.5).state is State.READY
    assert t.observe(BAD, 2.5).state is None
    assert t.observe(BAD, 4.5).state is None
    unhealthy = t.observe(BAD, 6.5)
    assert (unhealthy.state, unhealthy.detail) == (State.UNHEALTHY, "HTTP 503")
    back = t.observe(OK, 8.5)
    assert (back.state, back.detail) == (State.READY, "HTTP 200")
    # Any pass resets the count: two failures are not enough again.
    assert t.observe(BAD, 10.5).state is None
    assert t.observe(BAD, 12.5).state is None


def test_without_restart_unhealthy_it_stays_unhealthy() -> None:
    spec = HealthSpec(kind=HealthKind.HTTP, interval=1.0, retries=1, restart_unhealthy=False)
    t = HealthTracker.for_check(spec, started=0.0, what="http /", start_timeout=1000.0)
    assert t.observe(OK, 0.1).state is State.READY
    assert t.observe(BAD, 1.1).state is State.UNHEALTHY
    assert all(t.observe(BAD, 2.0 + i).action is Action.NONE for i in range(50))


def test_a_check_never_ready_fails_at_the_start_timeout_even_when_unhealthy() -> None:
    spec = HealthSpec(kind=HealthKind.HTTP, interval=1.0, retries=1, restart_unhealthy=False)
    t = HealthTracker.for_check(spec, started=0.0, what="http /", start_timeout=30.0)
    assert t.observe(BAD, 1.0).state is State.UNHEALTHY
    failed = t.observe(BAD, 30.0)
    assert failed.action is Action.FAIL
    assert failed.detail == "not ready after 30s: http / not passing yet: HTTP 503"


def test_probes_the_daemon_could_not_run_are_no_verdict() -> None:
    t = _check(start_timeout=10.0)
    assert t.observe(OK, 0.5).state is State.READY
    # Out of fds in the daemon: no failure counted, however many, however late.
    for now in range(1, 100):
        seen = t.observe(NO_FDS, float(now))
        assert seen.state is None and seen.action is Action.NONE
    assert t.failures == 0
    starting = HealthTracker.for_port(8001, started=0.0, start_timeout=5.0)
    assert starting.observe(NO_FDS, now=50.0).action is Action.NONE
