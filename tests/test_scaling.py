"""The autoscaler's decision, on fake time: Knative's stable and panic modes, and Corral's rules
around zero (hold-and-start, idle timeout from the last request, a cold start that fails)."""

from __future__ import annotations

import math

import pytest

from config.model import ScaleSpec
from supervisor.scaling import ConcurrencyWindow, Decision, Mode, Observation, ScaleState, decide

SPEC = ScaleSpec(min=0, max=8, target=10, window=60.0, panic_window=6.0, idle_timeout=60.0)


def _seen(
    current: int,
    ready: int | None = None,
    stable: float = 0.0,
    panic: float | None = None,
    *,
    demand: int | None = None,
    held: int = 0,
    idle_for: float | None = None,
    cold_start_for: float | None = None,
    alive: int | None = None,
) -> Observation:
    in_flight = round(stable if panic is None else panic)
    return Observation(
        current=current,
        ready=current if ready is None else ready,
        stable=stable,
        panic=stable if panic is None else panic,
        demand=in_flight + held if demand is None else demand,
        held=held,
        idle_for=idle_for if (demand == 0 or (demand is None and in_flight + held == 0)) else None,
        cold_start_for=cold_start_for,
        alive=alive,
    )


def _decide(seen: Observation, state: ScaleState | None = None, now: float = 100.0) -> Decision:
    return decide(SPEC, seen, state or ScaleState(), now)


def test_stable_mode_aims_at_the_target_per_instance() -> None:
    decision = _decide(_seen(2, stable=25.0, panic=25.0))

    assert (decision.desired, decision.mode) == (3, Mode.STABLE)
    assert decision.reason == "scaling out: in-flight 25.0 vs target 10"
    assert (decision.wanted_stable, decision.wanted_panic) == (3, 3)


def test_a_burst_panics_and_scales_out_on_the_short_window() -> None:
    # 34 in flight over the last 6 s on one instance, while the minute's average is still low.
    decision = _decide(_seen(1, stable=5.0, panic=34.0))

    assert (decision.desired, decision.mode) == (4, Mode.PANIC)
    assert decision.reason == "panic: 34.0 in flight over 6s vs target 10 on 1 ready"
    assert decision.state == ScaleState(panic_since=100.0, panic_count=4)


def test_panic_never_scales_down_and_ends_a_stable_window_after_the_last_burst() -> None:
    state = _decide(_seen(1, stable=5.0, panic=34.0), now=100.0).state
    # The burst is over: the panic window wants 1, but panic mode keeps 4.
    calm = _seen(4, stable=12.0, panic=8.0)
    still = _decide(calm, state, now=130.0)
    assert (still.desired, still.mode) == (4, Mode.PANIC)
    # A whole window (60 s) after the threshold was last crossed: stable again, and the count
    # may go down, by at most half the ready instances at a time.
    after = _decide(_seen(4, stable=3.0, panic=3.0), still.state, now=160.0)
    assert (after.desired, after.mode) == (2, Mode.STABLE)
    assert after.reason == "scaling in: in-flight 3.0 vs target 10"
    assert after.state == ScaleState()


def test_crossing_the_threshold_again_extends_the_panic() -> None:
    state = _decide(_seen(1, stable=5.0, panic=34.0), now=100.0).state
    again = _decide(_seen(4, stable=20.0, panic=90.0), state, now=150.0)
    assert (again.desired, again.state.panic_since) == (8, 150.0)  # 9 wanted, max 8
    # 60 s after the first burst, but only 20 s after the second: still panicking.
    assert _decide(_seen(8, stable=5.0, panic=5.0), again.state, now=170.0).mode is Mode.PANIC


def test_scale_in_halves_at_most() -> None:
    decision = _decide(_seen(8, stable=4.0, panic=4.0, idle_for=None))

    assert decision.desired == 4


def test_never_above_max_nor_below_min() -> None:
    assert _decide(_seen(8, stable=500.0, panic=80.0)).desired == 8
    spec = ScaleSpec(min=2, max=4, target=10)
    idle = decide(spec, _seen(2, stable=0.0, idle_for=1e6), ScaleState(), 100.0)
    assert (idle.desired, idle.reason) == (2, "at min 2")


def test_at_zero_a_held_request_starts_one_instance() -> None:
    decision = _decide(_seen(0, ready=0, held=3))

    assert (decision.desired, decision.reason) == (1, "cold start: 3 requests held")


def test_at_zero_with_no_request_nothing_starts_whatever_the_window_remembers() -> None:
    decision = _decide(_seen(0, ready=0, stable=3.0, panic=3.0, demand=0, idle_for=5.0))

    assert (decision.desired, decision.reason) == (0, "idle")


def test_the_last_instance_goes_after_idle_timeout_from_the_last_request() -> None:
    # KEDA's #881: counted from the last request, not from the scale-up. Scaled up long ago,
    # requests until 20 s ago: the instance stays.
    assert _decide(_seen(1, stable=0.2, demand=0, idle_for=20.0)).desired == 1
    gone = _decide(_seen(1, stable=0.0, demand=0, idle_for=60.0))
    assert (gone.desired, gone.reason) == (0, "idle for 1m")


def test_idle_timeout_can_be_shorter_than_the_window() -> None:
    spec = ScaleSpec(min=0, max=8, target=10, window=60.0, idle_timeout=5.0)
    # The window still remembers requests, but none came for 5 s: straight down to min.
    decision = decide(spec, _seen(3, stable=12.0, demand=0, idle_for=5.0), ScaleState(), 100.0)

    assert (decision.desired, decision.reason) == (0, "idle for 5s")


def test_a_request_in_flight_keeps_an_instance() -> None:
    decision = _decide(_seen(1, stable=0.01, panic=0.01, demand=1))

    assert decision.desired == 1


def test_a_cold_start_that_never_gets_ready_gives_up() -> None:
    waiting = _decide(_seen(1, ready=0, held=2, cold_start_for=29.0))
    assert waiting.desired == 1 and not waiting.cold_start_failed

    failed = _decide(_seen(1, ready=0, held=2, cold_start_for=30.0))
    assert failed.desired == 0 and failed.cold_start_failed
    assert failed.reason == "cold start failed: no instance ready after 30s"


def test_steady_and_max_reasons() -> None:
    assert (
        _decide(_seen(2, stable=15.0, panic=15.0)).reason == "steady: in-flight 15.0 vs target 10"
    )
    at_max = _decide(_seen(8, stable=200.0, panic=90.0), ScaleState(100.0, 8))
    assert at_max.reason.startswith("panic:")
    stable_max = decide(
        ScaleSpec(max=2, target=10, panic_threshold=10.0),
        _seen(2, stable=50.0, panic=50.0),
        ScaleState(),
        100.0,
    )
    assert stable_max.reason == "at max 2: in-flight 50.0 vs target 10"


@pytest.mark.parametrize("bad", [-3.0, math.nan, math.inf])
def test_a_broken_reading_is_no_load(bad: float) -> None:
    seen = Observation(current=2, ready=2, stable=bad, panic=bad, demand=0, held=0, idle_for=1.0)
    decision = _decide(seen)

    assert decision.desired == 1  # down by at most half, and the last stays until idle


def test_a_burst_then_silence_end_to_end() -> None:
    """Ticks every 0.5 s: 50 concurrent requests for 10 s on target 10, then nothing."""
    spec = ScaleSpec(min=0, max=8, target=10, window=10.0, panic_window=2.0, idle_timeout=5.0)
    window = ConcurrencyWindow(keep=spec.window)
    state, current, t, last_busy = ScaleState(), 1, 0.0, 0.0
    counts = []
    for tick in range(80):
        t = tick * 0.5
        load = 50.0 if t < 10 else 0.0
        window.record(t, 0.5, load)
        if load:
            last_busy = t
        seen = Observation(
            current=current,
            ready=current,
            stable=window.average(t, spec.window),
            panic=window.average(t, spec.panic_window),
            demand=int(load),
            held=0,
            idle_for=None if load else t - last_busy,
        )
        decision = decide(spec, seen, state, t)
        state, current = decision.state, decision.desired
        counts.append(current)
    assert counts[0] == 5  # the first tick already sees 50 in flight: panic, 5 instances
    assert max(counts) == 5 and counts[19] == 5  # held through the burst
    after = counts[20:]
    # Then down as the stable window forgets the burst, never up, and to zero once idle for
    # idle_timeout (5 s = 10 ticks after the last request at t = 9.5).
    assert after == sorted(after, reverse=True)
    assert after[0] == 5 and after[-1] == 0
    assert counts.index(0) == 19 + 10


def test_window_average_is_time_weighted_over_what_was_seen() -> None:
    window = ConcurrencyWindow(keep=10.0)
    window.record(1.0, 1.0, 4.0)  # 0-1 s: 4 in flight
    window.record(3.0, 2.0, 1.0)  # 1-3 s: 1
    assert window.average(3.0, 10.0) == pytest.approx((4 * 1 + 1 * 2) / 3)
    assert window.average(3.0, 1.0) == pytest.approx(1.0)
    assert window.average(3.0, 2.5) == pytest.approx((4 * 0.5 + 1 * 2) / 2.5)
    window.record(20.0, 1.0, 2.0)  # the rest fell out of the 10 s kept
    assert window.average(20.0, 10.0) == pytest.approx(2.0)
    assert window.average(40.0, 5.0) == 0.0
    window.clear()
    assert window.average(20.0, 10.0) == 0.0


def test_a_crash_with_no_request_under_way_is_not_restarted() -> None:
    # Instance 2 of 2 crashed at zero traffic: down to the one still alive, not a restart.
    decision = _decide(_seen(2, ready=1, stable=15.0, demand=0, idle_for=1.0, alive=1))
    assert (decision.desired, decision.reason) == (
        1,
        "crashed with no request waiting: not restarted",
    )
    # With a request under way it is restarted as usual; min keeps what it needs.
    assert _decide(_seen(2, ready=1, stable=15.0, demand=1, alive=1)).desired == 2
    spec = ScaleSpec(min=2, max=4, target=10)
    seen = _seen(2, ready=1, demand=0, idle_for=1.0, alive=0)
    assert decide(spec, seen, ScaleState(), 100.0).desired == 2


def test_no_traffic_ends_a_panic_and_goes_to_min_forgetting_the_burst() -> None:
    spec = ScaleSpec(min=0, max=4, target=2, window=10.0, idle_timeout=3.0)
    panicking = decide(spec, _seen(1, stable=1.0, panic=12.0), ScaleState(), 100.0)
    assert (panicking.desired, panicking.mode) == (4, Mode.PANIC)
    # The burst is over but requests still come now and then: panic keeps the count.
    quiet = decide(spec, _seen(4, stable=6.0, panic=0.5, demand=1), panicking.state, 102.0)
    assert (quiet.desired, quiet.mode) == (4, Mode.PANIC)
    pause = decide(spec, _seen(4, stable=6.0, panic=0.0, demand=0, idle_for=2.0), quiet.state, 103)
    assert (pause.desired, pause.mode) == (4, Mode.PANIC) and not pause.forget
    # Nothing in flight or held for idle_timeout: no traffic, which ends the panic.
    idle = decide(spec, _seen(4, stable=6.0, panic=0.0, demand=0, idle_for=3.0), pause.state, 104)
    assert (idle.desired, idle.mode, idle.state) == (0, Mode.STABLE, ScaleState())
    assert idle.reason == "idle for 3s" and idle.forget
    # With a min, the same: straight down to it.
    floor = ScaleSpec(min=1, max=4, target=2, window=10.0, idle_timeout=3.0)
    seen = _seen(4, stable=6.0, panic=0.0, demand=0, idle_for=3.0)
    to_min = decide(floor, seen, pause.state, 104.0)
    assert (to_min.desired, to_min.mode, to_min.reason) == (1, Mode.STABLE, "idle for 3s")
    steady = decide(floor, _seen(1, demand=0, idle_for=9.0), to_min.state, 110.0)
    assert (steady.desired, steady.reason) == (1, "at min 1")


def test_a_cold_start_wants_what_is_held_whatever_came_before() -> None:
    spec = ScaleSpec(min=0, max=4, target=2, window=10.0, idle_timeout=3.0)
    burst = decide(spec, _seen(1, stable=1.0, panic=12.0), ScaleState(), 100.0)
    assert burst.mode is Mode.PANIC
    # Even handed a panic state and windows that still remember the burst (the autoscaler
    # clears them on `forget`), one held request starts one instance, not `max`.
    one = decide(spec, _seen(0, ready=0, stable=6.9, panic=6.9, held=1, demand=1), burst.state, 101)
    assert (one.desired, one.mode, one.state) == (1, Mode.STABLE, ScaleState())
    assert one.reason == "cold start: 1 request held" and one.forget
    five = decide(spec, _seen(0, ready=0, held=5, demand=5), ScaleState(), 101.0)
    assert (five.desired, five.reason) == (3, "cold start: 5 requests held")  # ceil(5 / 2)
    assert decide(spec, _seen(0, ready=0, held=50, demand=50), ScaleState(), 101.0).desired == 4


def test_a_failed_cold_start_forgets_its_panic() -> None:
    spec = ScaleSpec(min=0, max=4, target=2, cold_start_timeout=3.0)
    panic = ScaleState(panic_since=100.0, panic_count=2)
    failed = decide(spec, _seen(2, ready=0, held=8, cold_start_for=3.0), panic, 103.0)
    assert (failed.desired, failed.mode, failed.state) == (0, Mode.STABLE, ScaleState())
    assert failed.cold_start_failed and failed.forget
    # The next request starts what it needs, one instance.
    again = decide(spec, _seen(0, ready=0, held=1), failed.state, 104.0)
    assert again.desired == 1


def test_a_burst_to_zero_then_one_request_starts_one_instance() -> None:
    """As the autoscaler runs it: windows cleared on `forget`, ticks every 0.5 s."""
    spec = ScaleSpec(min=0, max=4, target=2, window=10.0, panic_window=1.0, idle_timeout=3.0)
    window = ConcurrencyWindow(keep=spec.window)
    state, current, last_busy = ScaleState(), 1, 0.0
    counts = []
    for tick in range(20):
        t = tick * 0.5
        load = 16.0 if t < 4 else (1.0 if t == 9.5 else 0.0)
        window.record(t, 0.5, load)
        if load:
            last_busy = t
        seen = Observation(
            current=current,
            ready=current,
            stable=window.average(t, spec.window),
            panic=window.average(t, spec.panic_window),
            demand=int(load),
            held=int(load) if current == 0 else 0,
            idle_for=None if load else t - last_busy,
        )
        decision = decide(spec, seen, state, t)
        if decision.forget:
            window.clear()
        state, current = decision.state, decision.desired
        counts.append(current)
    assert max(counts) == 4 and counts[18] == 0, counts  # the burst, then idle: zero
    assert counts[19] == 1, counts  # one request at zero: one instance, not the burst's 4


def test_a_cold_start_whose_instances_failed_gives_up_at_once() -> None:
    seen = Observation(
        current=1,
        ready=0,
        stable=1.0,
        panic=1.0,
        demand=2,
        held=2,
        idle_for=None,
        cold_start_for=0.4,
        cold_start_error="fn.1 failed at start: exit 3",
    )
    failed = _decide(seen)
    assert (failed.desired, failed.cold_start_failed, failed.forget) == (0, True, True)
    assert failed.reason == "cold start failed: fn.1 failed at start: exit 3"
