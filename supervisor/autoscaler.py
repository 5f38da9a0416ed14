"""The autoscaler: one long-lived task that scales every autoscaled service by its requests.

Every TICK it reads each autoscaled service's demand from the proxy (requests in flight and
held, and their request-seconds so far), feeds the service's concurrency window, asks the pure
decision (`scaling.decide`) for a count, and applies it through the Service (`resize`: new
instances are spawned at once, those past the count drain before they stop). A request held
by the proxy at zero wakes it at once (`activate`), so a cold start never waits for a tick.

It also keeps what `ps`, `/v1/status`, `/metrics` and `events` say about scaling: the latest
decision and its inputs, how many cold starts there were and how long they took.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict

from config.model import IdleMode
from config.units import format_duration
from proxy.prometheus import family, labels, le

from .clock import SYSTEM_CLOCK, Clock
from .events import Event, EventBus
from .scaling import ConcurrencyWindow, Decision, Mode, Observation, ScaleState, decide
from .states import Phase, State

if TYPE_CHECKING:
    from .instance import Instance
    from .service import Service

log = logging.getLogger(__name__)

# Knative decides every 2 s; one machine can afford to look four times as often.
TICK = 0.5
# Cold starts take from milliseconds (a thaw) to seconds (an interpreter importing a framework).
# States from which an instance may still get ready without an order.
_COMING = frozenset(
    {State.STARTING, State.READY, State.UNHEALTHY, State.RUNNING, State.CRASHED, State.BACKOFF}
)
COLD_START_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Demand:
    """A service's requests as the proxy counts them."""

    in_flight: int  # on its instances
    held: int  # waiting in the proxy for an instance, or for a free slot on one
    busy: float  # request-seconds so far: (in flight + held) integrated over time
    idle_since: float | None  # monotonic time the last request ended; None while one is out


class DemandSource(Protocol):
    """Where demand comes from (the proxy's pools, through traffic.py)."""

    def demand(self, service: str) -> Demand | None: ...

    def set_holding(self, service: str, holding: bool, reason: str = "") -> None:
        """Whether requests at zero are held (an instance will start) or refused at once."""
        ...

    def refuse_held(self, service: str, reason: str) -> None:
        """The requests held now get a 503 at once, saying `reason`."""
        ...


class ScaleStatus(TypedDict):
    """What `GET /v1/status` says of an autoscaled service (`services.NAME.autoscale`)."""

    min: int
    max: int
    desired: int
    ready: int
    mode: str  # "stable" or "panic"
    reason: str  # "scaling out: in-flight 34.0 vs target 10"
    target: float
    in_flight: float  # average over the stable window
    in_flight_panic: float  # … over the panic window
    held: int
    frozen: bool
    cold_starts: int
    thaws: int
    last_cold_start_ms: float | None


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(COLD_START_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(COLD_START_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


@dataclass(slots=True)
class _Track:
    """One autoscaled service, as the autoscaler follows it."""

    window: ConcurrencyWindow
    started: float  # when following began (idle counts from here until a first request)
    state: ScaleState = field(default_factory=ScaleState)
    busy: float | None = None  # the demand's request-seconds at the last tick
    at: float = 0.0
    cold_since: float | None = None  # a start from zero began; nothing ready yet
    cold_kind: str = ""  # "start" (a new process) or "thaw" (a frozen one)
    cold_error: str | None = None  # why the cold start cannot succeed (its instance failed)
    seen: Observation | None = None
    latest: Decision | None = None
    cold_starts: int = 0
    thaws: int = 0
    last_cold_start: float | None = None
    durations: dict[str, _Histogram] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)  # direction → count
    crashed: set[int] = field(default_factory=set)  # indexes whose last run crashed


class Autoscaler:
    """Scales the autoscaled services; owned by the daemon's nursery (`run`)."""

    def __init__(
        self,
        services: Callable[[], Mapping[str, Service]],
        demand: DemandSource,
        events: EventBus,
        *,
        clock: Clock = SYSTEM_CLOCK,
        tick: float = TICK,
    ) -> None:
        self._services = services
        self._demand = demand
        self._events = events
        self._clock = clock
        self._tick = tick
        self._tracks: dict[str, _Track] = {}
        self._wake = asyncio.Event()
        self._activated: dict[str, float] = {}  # service → when a request was first held

    # --- what the proxy and the daemon tell it ------------------------------------------------

    def activate(self, name: str) -> None:
        """A request for `name` is waiting in the proxy: decide now, not at the next tick."""
        self._activated.setdefault(name, self._clock.now())
        self._wake.set()

    def instance_changed(self, inst: Instance, new: State) -> None:
        """An instance changed state (the daemon's hook): a cold start ends when it is ready;
        a crash is judged at once, before its backoff ends (not restarted at zero traffic)."""
        track = self._tracks.get(inst.spec.name)
        if track is None:
            return
        if new is State.FAILED and track.cold_since is not None:
            self._cold_start_failed(inst)
            return
        if new is State.CRASHED:
            track.crashed.add(inst.index)
            service = self._services().get(inst.spec.name)
            if service is not None and service.spec.scale is not None:
                self._step(service)
            return
        if new is not State.READY:
            return
        track.crashed.discard(inst.index)
        if track.cold_since is None:
            return
        took = self._clock.now() - track.cold_since
        track.cold_since = None
        track.last_cold_start = took
        track.durations.setdefault(track.cold_kind, _Histogram()).observe(took)
        if track.cold_kind == "thaw":
            track.thaws += 1
        else:
            track.cold_starts += 1
        log.info(
            "%s: %s from zero in %.1f ms (pid=%s)",
            inst.name,
            "thawed" if track.cold_kind == "thaw" else "cold start",
            took * 1000,
            inst.pid,
        )

    def _cold_start_failed(self, inst: Instance) -> None:
        """An instance failed while a cold start waits for it: if no other one can still get
        ready, the held requests need not wait for `cold_start_timeout` to learn it."""
        service = self._services().get(inst.spec.name)
        track = self._tracks.get(inst.spec.name)
        if service is None or service.spec.scale is None or track is None:
            return
        if any(i.state in _COMING for i in service.instances.values()):
            return
        detail = f": {inst.detail}" if inst.detail else ""
        track.cold_error = f"{inst.name} failed at start{detail}"
        self._demand.refuse_held(service.name, track.cold_error)
        # Decided by the task, not here: this may run inside a resize (a spawn that failed).
        self._wake.set()

    # --- the task -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Decide for every autoscaled service each tick, and at once when a request waits."""
        while True:
            self.step()
            await self._clock.wait(self._wake, self._tick)
            self._wake.clear()

    def step(self) -> None:
        """One round of decisions (synchronous: every action is a Service method that
        returns at once)."""
        services = self._services()
        for name in set(self._tracks) - {n for n, s in services.items() if s.spec.scale}:
            del self._tracks[name]
        for service in services.values():
            if service.spec.scale is not None:
                self._step(service)
        self._activated.clear()

    def _step(self, service: Service) -> None:
        spec = service.spec.scale
        assert spec is not None
        name = service.name
        now = self._clock.now()
        track = self._tracks.get(name)
        if track is None:
            track = self._tracks[name] = _Track(ConcurrencyWindow(spec.window), started=now)
        track.window.keep = spec.window  # a reload may have changed it
        demand = self._demand.demand(name) or Demand(0, 0, 0.0, None)
        if track.busy is not None and now > track.at:
            seconds = now - track.at
            track.window.record(now, seconds, (demand.busy - track.busy) / seconds)
        track.busy, track.at = demand.busy, now
        load = demand.in_flight + demand.held
        if load:
            idle_for = None
        else:
            since = demand.idle_since if demand.idle_since is not None else track.started
            idle_for = now - max(since, track.started)
        current = service.desired
        track.crashed &= set(service.instances)
        up = [i for i in service.instances if i not in track.crashed]
        seen = Observation(
            current=current,
            ready=service.ready_count(),
            stable=track.window.average(now, spec.window),
            panic=track.window.average(now, spec.panic_window),
            demand=load,
            held=demand.held,
            idle_for=idle_for,
            cold_start_for=now - track.cold_since if track.cold_since is not None else None,
            cold_start_error=track.cold_error if track.cold_since is not None else None,
            alive=max(up, default=0) if track.crashed else None,
        )
        decision = decide(spec, seen, track.state, now)
        track.state, track.seen, track.latest = decision.state, seen, decision
        if decision.forget:
            track.window.clear()
        if service.stopped_by_order:
            self._demand.set_holding(name, False, f"{name} is stopped (corral start {name})")
        elif service.phase not in (Phase.FAILED, Phase.STOPPED):
            self._demand.set_holding(name, True)
        if not service.autoscaling:
            return  # stopped by an order, failed, or not brought up yet: nothing to act on
        if decision.cold_start_failed:
            track.cold_since, track.cold_error = None, None
            self._count(track, "cold_start_failed")
        freeze = spec.idle is IdleMode.FREEZE and not decision.cold_start_failed
        if decision.desired == current and not service.needs_resize(current, freeze=freeze):
            return
        if not service.resizable:
            return  # a roll or a reload holds the service: decided again next tick
        starting = current == 0 and decision.desired > 0
        thawing = starting and service.frozen_instance() is not None
        if starting and track.cold_since is None:
            # Timed from the first held request (the proxy's wake-up), or from now; set
            # before the resize, since a thaw is ready within it.
            track.cold_since = min(self._activated.get(name, now), now)
            track.cold_kind = "thaw" if thawing else "start"
        if decision.desired != current:
            # The decision first, then what it does (the instances' own events follow).
            self._count(track, _direction(current, decision.desired, thawing, freeze))
            inputs = _inputs(seen, decision, spec.target)
            self._events.emit(
                Event(
                    "scale",
                    service=name,
                    old=str(current),
                    new=str(decision.desired),
                    detail=f"{decision.reason} ({inputs})",
                )
            )
            log.info(
                "%s: scaled %d -> %d: %s (%s)",
                name,
                current,
                decision.desired,
                decision.reason,
                inputs,
            )
        service.resize(decision.desired, freeze=freeze)

    @staticmethod
    def _count(track: _Track, direction: str) -> None:
        track.decisions[direction] = track.decisions.get(direction, 0) + 1

    # --- what others read ----------------------------------------------------------------------

    def describe(self, service: Service) -> ScaleStatus | None:
        """The autoscaling part of a service's status (None if it is not autoscaled)."""
        spec = service.spec.scale
        if spec is None:
            return None
        track = self._tracks.get(service.name)
        seen = track.seen if track is not None else None
        latest = track.latest if track is not None else None
        reason = latest.reason if latest is not None else "starting"
        if service.stopped_by_order:
            reason = f"stopped (corral start {service.name})"
        elif not service.autoscaling and latest is not None:
            reason = f"not autoscaling ({service.phase.value}): {reason}"
        return ScaleStatus(
            min=spec.min,
            max=spec.max,
            desired=service.desired,
            ready=service.ready_count(),
            mode=(
                latest.mode if latest is not None and not service.stopped_by_order else Mode.STABLE
            ).value,
            reason=reason,
            target=spec.target,
            in_flight=round(seen.stable, 3) if seen is not None else 0.0,
            in_flight_panic=round(seen.panic, 3) if seen is not None else 0.0,
            held=seen.held if seen is not None else 0,
            frozen=service.frozen_instance() is not None,
            cold_starts=track.cold_starts if track is not None else 0,
            thaws=track.thaws if track is not None else 0,
            last_cold_start_ms=(
                round(track.last_cold_start * 1000, 1)
                if track is not None and track.last_cold_start is not None
                else None
            ),
        )

    def metrics(self) -> str:
        """Prometheus text: cold-start durations, scale decisions, the autoscaler's view."""
        if not self._tracks:
            return ""
        buckets: list[str] = []
        decisions: list[str] = []
        observed: list[str] = []
        panic: list[str] = []
        for name, track in sorted(self._tracks.items()):
            for kind, hist in sorted(track.durations.items()):
                seen = 0
                for bound, count in zip(
                    [*COLD_START_BUCKETS, float("inf")], hist.counts, strict=True
                ):
                    seen += count
                    tags = labels(service=name, kind=kind, le=le(bound))
                    buckets.append(f"corral_cold_start_seconds_bucket{tags} {seen}")
                tags = labels(service=name, kind=kind)
                buckets.append(f"corral_cold_start_seconds_sum{tags} {hist.total:.6f}")
                buckets.append(f"corral_cold_start_seconds_count{tags} {hist.n}")
            for direction, count in sorted(track.decisions.items()):
                tags = labels(service=name, direction=direction)
                decisions.append(f"corral_scale_decisions_total{tags} {count}")
            if track.seen is not None:
                for window, value in (("stable", track.seen.stable), ("panic", track.seen.panic)):
                    tags = labels(service=name, window=window)
                    observed.append(f"corral_autoscaler_in_flight{tags} {value:.3f}")
            mode = track.latest.mode if track.latest is not None else Mode.STABLE
            panic.append(f"corral_autoscaler_panic{labels(service=name)} {int(mode is Mode.PANIC)}")
        lines = [
            *family(
                "corral_cold_start_seconds",
                "histogram",
                "From a request held at zero to a ready instance (kind: start or thaw).",
                buckets,
            ),
            *family(
                "corral_scale_decisions_total",
                "counter",
                "Autoscaler decisions that changed the count (up, down, to_zero, freeze, thaw, "
                "cold_start_failed).",
                decisions,
            ),
            *family(
                "corral_autoscaler_in_flight",
                "gauge",
                "Requests in flight or held, averaged over the stable and the panic window.",
                observed,
            ),
            *family("corral_autoscaler_panic", "gauge", "1 while in panic mode.", panic),
        ]
        return "\n".join(lines) + "\n"


def _direction(old: int, new: int, thawing: bool, freeze: bool) -> str:
    if new > old:
        return "thaw" if thawing else "up"
    if new == 0:
        return "freeze" if freeze else "to_zero"
    return "down"


def _inputs(seen: Observation, decision: Decision, target: float) -> str:
    idle = f", idle {format_duration(round(seen.idle_for, 1))}" if seen.idle_for is not None else ""
    return (
        f"{decision.mode.value}; in flight {seen.stable:.2f} stable / {seen.panic:.2f} panic "
        f"vs target {target:g}; wanted {decision.wanted_stable} / {decision.wanted_panic}; "
        f"{seen.ready} ready, {seen.held} held{idle}"
    )
