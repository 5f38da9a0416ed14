"""Readiness and liveness of one process, decided from probe results: pure, no I/O, no clock.

The instance runs the probes and sleeps; the tracker only says what a result means. One probe
serves both readiness and liveness (see docs/config.md, "Health checks"):

- start-up: probes come fast (20 ms, growing x1.5, at most 250 ms apart) until the first
  success makes the instance READY; failures do not count during the grace
  `start_period + retries x interval`; after it, a process that answers but fails the check
  is UNHEALTHY ("not ready after start-up"), while one whose port still refuses connections
  is still starting (on a loaded machine an interpreter can take seconds to bind); and if it
  has never been ready when `start_timeout` runs out, the start failed;
- readiness: `retries` failures in a row make a READY instance UNHEALTHY; a success makes it
  READY again;
- liveness: an UNHEALTHY instance failing `retries` more probes is restarted (if
  `restart_unhealthy`).

With a port and no health check the probe is "does the port accept a connection": readiness
only, no liveness, and probing stops once the instance is ready.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from config.model import HealthSpec
from config.units import format_duration

from .probe import ProbeResult
from .states import State

FIRST_PROBE_DELAY = 0.02
# Never further apart than this while starting: on a loaded machine an instance can take
# seconds to start, and a probe schedule grown to the full interval would leave it listening,
# unused, for up to that long. Refused connects are cheap.
STARTING_PROBE_MAX = 0.25
# An autoscaled instance starts because requests wait for it (a cold start, or a burst):
# every millisecond between its port opening and the first probe is theirs.
COLD_START_PROBE = 0.01


class Action(enum.Enum):
    NONE = "none"
    RESTART = "restart"  # liveness failed: stop the process; counts as a crash
    FAIL = "fail"  # start timeout: stop the process; the instance has failed


@dataclass(frozen=True, slots=True)
class Transition:
    """What one probe result means for the instance."""

    state: State | None = None  # the instance's new state, if it changes
    detail: str = ""  # goes with the new state, or says what a starting instance waits for
    action: Action = Action.NONE
    next_probe: float | None = 0.0  # seconds until the next probe; None: stop probing


@dataclass(slots=True)
class HealthTracker:
    """The health state machine of one process run."""

    started: float  # when the process was spawned (the caller's monotonic clock)
    start_timeout: float  # never ready within this → the start failed
    interval: float
    retries: int
    grace: float | None  # failures count from here on while starting (None: never)
    liveness: bool  # restart an instance that stays unhealthy
    readiness_only: bool  # stop probing once ready (the port check)
    waiting: str  # what a starting instance waits for: "port 8001 not accepting yet"
    state: State = State.STARTING
    failures: int = 0
    delay: float = FIRST_PROBE_DELAY
    ever_ready: bool = False
    pace_max: float = STARTING_PROBE_MAX  # probes at most this far apart while starting

    @classmethod
    def for_check(
        cls,
        spec: HealthSpec,
        *,
        started: float,
        start_timeout: float = math.inf,
        what: str,
        pace_max: float = STARTING_PROBE_MAX,
    ) -> HealthTracker:
        """A tracker for a configured health check (`what`: "http /healthz", "exec …");
        `pace_max`: COLD_START_PROBE for an instance requests are waiting for."""
        return cls(
            started=started,
            start_timeout=start_timeout,
            interval=spec.interval,
            retries=spec.retries,
            grace=spec.start_period + spec.retries * spec.interval,
            liveness=spec.restart_unhealthy,
            readiness_only=False,
            waiting=f"{what} not passing yet",
            delay=min(FIRST_PROBE_DELAY, pace_max),
            pace_max=pace_max,
        )

    @classmethod
    def for_port(
        cls,
        port: int,
        *,
        started: float,
        start_timeout: float = math.inf,
        pace_max: float = STARTING_PROBE_MAX,
    ) -> HealthTracker:
        """A tracker for "ready once the port accepts connections" (no health check)."""
        return cls(
            started=started,
            start_timeout=start_timeout,
            interval=STARTING_PROBE_MAX,
            retries=1,
            grace=None,
            liveness=False,
            readiness_only=True,
            waiting=f"port {port} not accepting yet",
            delay=min(FIRST_PROBE_DELAY, pace_max),
            pace_max=pace_max,
        )

    def observe(self, result: ProbeResult, now: float) -> Transition:
        """The meaning of `result`, probed at `now`."""
        if not result.conclusive:
            # The daemon could not probe (out of fds): no verdict either way, not even the
            # start timeout, which would blame the instance for the daemon's trouble.
            return Transition(detail=result.detail, next_probe=self._pace())
        if result.ok:
            self.failures = 0
            self.ever_ready = True
            after = None if self.readiness_only else self.interval
            if self.state is State.READY:
                return Transition(next_probe=after)
            came_from, self.state = self.state, State.READY
            return Transition(
                State.READY, "" if came_from is State.STARTING else result.detail, next_probe=after
            )
        if not self.ever_ready and now - self.started >= self.start_timeout:
            waited = format_duration(self.start_timeout)
            return Transition(
                detail=f"not ready after {waited}: {self._waiting(result)}",
                action=Action.FAIL,
                next_probe=None,
            )
        if self.state is State.STARTING:
            grace_over = self.grace is not None and now - self.started >= self.grace
            if grace_over and not result.refused:
                self.failures = self.retries
                self.state = State.UNHEALTHY
                return Transition(
                    State.UNHEALTHY,
                    f"not ready after start-up: {result.detail}",
                    next_probe=self.interval,
                )
            return Transition(detail=self._waiting(result), next_probe=self._pace())
        self.failures += 1
        if self.state is State.READY and self.failures >= self.retries:
            self.state = State.UNHEALTHY
            return Transition(State.UNHEALTHY, result.detail, next_probe=self.interval)
        if self.state is State.UNHEALTHY and self.liveness and self.failures >= 2 * self.retries:
            return Transition(
                detail="liveness check failed; restarting", action=Action.RESTART, next_probe=None
            )
        return Transition(next_probe=self.interval)

    def _pace(self) -> float:
        if self.state is not State.STARTING:
            return self.interval
        delay = self.delay
        self.delay = min(delay * 1.5, self.interval, self.pace_max)
        return delay

    def _waiting(self, result: ProbeResult) -> str:
        if self.readiness_only and result.refused:
            return self.waiting  # what "not accepting" means anyway
        return f"{self.waiting}: {result.detail}"
