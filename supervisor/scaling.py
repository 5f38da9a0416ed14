"""Pure autoscaling decisions: in-flight requests over a stable and a panic window → a count.

Knative's KPA, on one machine (docs/serverless.md):

- observed concurrency is the time-weighted average of the service's requests in flight (on
  its instances, and held by the proxy for want of one) over the stable `window` and the
  short `panic_window`;
- wanted = ceil(observed / target), per window; never down by more than half the ready
  instances in one decision (Knative's max-scale-down-rate 2);
- panic starts when the panic window wants `panic_threshold` times the ready instances (at
  least one counted), and lasts until a whole stable window passed without that; while
  panicking the count follows the panic window and never goes down;
- no traffic (nothing in flight or held for `idle_timeout`, counted from the end of the last
  request, not from the last scale-up) ends a panic, as Knative's ends once its window shows
  no excess: the count goes straight to `min` (nothing asks for the instances, so not half at
  a time), and both windows and the panic state are forgotten;
- at zero only a request starts something: as many instances as the requests waiting need,
  ceil(waiting / target), at least one (Knative's activator-driven 0 -> N), never what the
  windows remember of a burst before the service went to zero;
- a cold start that has no ready instance after `cold_start_timeout`, or whose instances all
  failed (crashed at start until given up on), gives up (back to `min`, so nothing is left
  running), and its windows and panic state are forgotten too;
- an instance that crashes while no request is under way is not restarted (unless `min` needs
  it): a crash at zero traffic must not become a restart loop; the next request starts one;
- the result is clamped to `min` … `max`.

Nothing here reads a clock or does I/O: the autoscaler (autoscaler.py) passes the time in.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass, field

from config.model import ScaleSpec
from config.units import format_duration

MAX_SCALE_DOWN_RATE = 2.0  # Knative's default: at most halve the ready instances per decision


class Mode(enum.Enum):
    STABLE = "stable"
    PANIC = "panic"


@dataclass(slots=True)
class ConcurrencyWindow:
    """Average concurrency per stretch of time, kept as long as the longest window needs.

    Each `record` says "over the last `seconds`, `average` requests were in flight on
    average" (the proxy's request-seconds counter, differenced). `average(now, span)` is the
    time-weighted mean over the part of the last `span` seconds that was observed, so a fresh
    service is judged on what has been seen rather than on zeros it never had.
    """

    keep: float  # seconds of history (the stable window)
    _spans: collections.deque[tuple[float, float, float]] = field(
        default_factory=collections.deque
    )  # (start, end, average)

    def record(self, now: float, seconds: float, average: float) -> None:
        if seconds <= 0:
            return
        self._spans.append((now - seconds, now, max(0.0, average)))
        while self._spans and self._spans[0][1] <= now - self.keep:
            self._spans.popleft()

    def average(self, now: float, span: float) -> float:
        """Mean concurrency over the observed part of (now - span, now]; 0 if none."""
        since = now - span
        weighted = covered = 0.0
        for start, end, value in reversed(self._spans):
            if end <= since:
                break
            overlap = min(end, now) - max(start, since)
            if overlap > 0:
                weighted += value * overlap
                covered += overlap
        return weighted / covered if covered > 0 else 0.0

    def clear(self) -> None:
        self._spans.clear()


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What a decision remembers for the next one (Knative's panic time and panic pods)."""

    panic_since: float | None = None  # the last time the panic threshold was crossed
    panic_count: int = 0  # the most instances panic mode has asked for (it never goes down)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the autoscaler sees at one tick."""

    current: int  # the service's desired count in force
    ready: int  # instances ready to take requests
    stable: float  # average requests in flight over the stable window
    panic: float  # … over the panic window
    demand: int  # requests in flight or held right now
    held: int  # of those, held by the proxy for want of an instance
    idle_for: float | None  # seconds since the last request ended (None: one is in flight)
    cold_start_for: float | None = None  # seconds a cold start has waited for a ready instance
    cold_start_error: str | None = None  # why it cannot succeed (its instances failed)
    # Instances 1 … alive are not down after a crash (None: all of them): with no request
    # under way, crashed ones above that are not restarted.
    alive: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The count to run, why, and what the next decision starts from."""

    desired: int
    mode: Mode
    reason: str  # what `corral ps` shows: "scaling out: in-flight 34 vs target 10"
    state: ScaleState
    wanted_stable: int  # ceil(stable / target), before min/max and the zero rules
    wanted_panic: int
    cold_start_failed: bool = False
    forget: bool = False  # the windows' history is no reason any more: clear it


def decide(spec: ScaleSpec, seen: Observation, state: ScaleState, now: float) -> Decision:
    """The desired count for `seen` at `now`, with the KPA's stable and panic modes."""
    wanted_stable = math.ceil(_clean(seen.stable) / spec.target)
    wanted_panic = math.ceil(_clean(seen.panic) / spec.target)

    def afresh(desired: int, reason: str, failed: bool = False) -> Decision:
        # No traffic, or nothing came of it: panic ends and the windows' past is forgotten,
        # so the next request is judged on itself, not on a burst long over.
        return Decision(
            desired,
            Mode.STABLE,
            reason,
            ScaleState(),
            wanted_stable,
            wanted_panic,
            cold_start_failed=failed,
            forget=True,
        )

    if seen.cold_start_for is not None and seen.ready == 0:
        if seen.cold_start_error:
            return afresh(spec.min, f"cold start failed: {seen.cold_start_error}", True)
        if seen.cold_start_for >= spec.cold_start_timeout:
            waited = format_duration(spec.cold_start_timeout)
            return afresh(spec.min, f"cold start failed: no instance ready after {waited}", True)
    if seen.current == 0:
        if seen.demand == 0:
            # At zero, only a request starts something.
            return afresh(spec.min, "idle" if spec.min == 0 else _at_min(spec))
        # Knative's activator-driven 0 -> N: as many as the requests waiting need, at least one.
        desired = _clamp(spec, math.ceil(seen.demand / spec.target))
        held = f"{seen.held} request{'s' if seen.held != 1 else ''} held"
        return afresh(desired, f"cold start: {held}" if seen.held else "cold start")
    if _idle_over(spec, seen):
        # Nothing in flight or held for idle_timeout: no traffic, which ends a panic too (its
        # window shows no excess); straight down to min, nothing is asking for the instances.
        if spec.min < seen.current:
            return afresh(spec.min, f"idle for {format_duration(spec.idle_timeout)}")
        return afresh(spec.min, _at_min(spec))

    ready = max(1, seen.ready)
    max_down = math.floor(ready / MAX_SCALE_DOWN_RATE)
    stable_count = max(wanted_stable, max_down)
    panic_count = max(wanted_panic, max_down)
    over = wanted_panic / ready >= spec.panic_threshold
    panic_since, most = state.panic_since, state.panic_count
    if over:
        if panic_since is None:
            most = seen.ready  # panic starts from what is ready now, and only goes up
        panic_since = now
    elif panic_since is not None and now - panic_since >= spec.window:
        panic_since, most = None, 0
    if panic_since is not None:
        most = max(most, panic_count)
        mode, wanted = Mode.PANIC, most
    else:
        mode, wanted = Mode.STABLE, stable_count
    next_state = ScaleState(panic_since, most if panic_since is not None else 0)

    def done(desired: int, reason: str) -> Decision:
        return Decision(desired, mode, reason, next_state, wanted_stable, wanted_panic)

    # A request has an instance; the last one stays until idle.
    desired = _clamp(spec, max(wanted, 1))
    if seen.demand == 0 and seen.alive is not None and desired > max(seen.alive, spec.min):
        # Restarting what crashed while nothing asked for it would be a loop at zero traffic.
        desired = max(seen.alive, spec.min)
        return done(desired, "crashed with no request waiting: not restarted")
    return done(desired, _reason(spec, seen, mode, desired))


def _clamp(spec: ScaleSpec, wanted: int) -> int:
    return min(max(wanted, spec.min), spec.max)


def _idle_over(spec: ScaleSpec, seen: Observation) -> bool:
    return seen.demand == 0 and seen.idle_for is not None and seen.idle_for >= spec.idle_timeout


def _clean(value: float) -> float:
    # A counter glitch (negative, NaN) must not become a count.
    return value if value > 0 and math.isfinite(value) else 0.0


def _at_min(spec: ScaleSpec) -> str:
    return f"at min {spec.min}"


def _reason(spec: ScaleSpec, seen: Observation, mode: Mode, desired: int) -> str:
    target = f"target {spec.target:g}"
    if mode is Mode.PANIC:
        observed = f"{seen.panic:.1f} in flight over {format_duration(spec.panic_window)}"
        return f"panic: {observed} vs {target} on {seen.ready} ready"
    observed = f"in-flight {seen.stable:.1f} vs {target}"
    if desired > seen.current:
        return f"scaling out: {observed}"
    if desired < seen.current:
        return f"scaling in: {observed}"
    if desired == spec.min and seen.stable == 0:
        return _at_min(spec)
    if desired == spec.max and math.ceil(seen.stable / spec.target) > spec.max:
        return f"at max {spec.max}: {observed}"
    return f"steady: {observed}"
