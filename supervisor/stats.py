"""The fleet's stats snapshot: one read of the daemon per tick, for every view at once.

`corral top` and the web dashboard get the whole fleet in one `GET /v1/stats` (or one frame of
its SSE stream) instead of one request per instance. Rates and p99 come from the difference
between the proxy's cumulative counters now and a few seconds ago, so they describe the recent
past, as `top` does, not the daemon's lifetime.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Rates and p99 are measured over about this many seconds, never over more than STALE.
WINDOW = 3.0
STALE = 10.0
# One sparkline point per this many seconds, and this many points kept per service.
HISTORY_STEP = 1.0
HISTORY_POINTS = 120
# Views that tick together share one snapshot instead of sampling the daemon each.
MAX_AGE = 0.25


class FleetSource(Protocol):
    """What the snapshot reads from the daemon (today two calls of `Daemon`)."""

    def ps(self) -> Sequence[Mapping[str, Any]]: ...
    def status(self) -> Mapping[str, Any]: ...


@dataclass(slots=True)
class _Counters:
    """A backend's cumulative proxy counters at one moment."""

    requests: int
    buckets: tuple[int, ...]  # per-bucket counts, not cumulative


@dataclass(slots=True)
class _Sample:
    at: float  # monotonic
    backends: dict[str, _Counters]  # pool backend key (`api.1@8001`) → counters


def _points() -> collections.deque[Any]:
    return collections.deque(maxlen=HISTORY_POINTS)


@dataclass(slots=True)
class _History:
    """One service's sparkline points: one per HISTORY_STEP slot while someone is watching."""

    slot: int = -1
    rps: collections.deque[float | None] = field(default_factory=_points)
    p99_ms: collections.deque[float | None] = field(default_factory=_points)


def _in_roll(row: Mapping[str, Any]) -> bool:
    """An old instance draining, or its replacement starting, during a rolling restart."""
    return bool(row.get("retiring") or row.get("incoming"))


def _done(row: Mapping[str, Any]) -> bool:
    return row.get("state") == "completed"


def _idle(row: Mapping[str, Any]) -> bool:
    """The line of an autoscaled service at zero: no instance, nothing down."""
    return row.get("state") == "idle"


def bucket_bounds(keys: Sequence[str]) -> list[float]:
    """Upper bounds of histogram buckets keyed like Prometheus `le` labels ("0.005", "+Inf")."""
    return [math.inf if key == "+Inf" else float(key) for key in keys]


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket (Prometheus' method).

    None without observations. In the +Inf bucket the answer is the highest finite bound: the
    histogram knows no more than "slower than that".
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, (bound, count) in enumerate(zip(bounds, counts, strict=True)):
        if count and seen + count >= rank:
            if math.isinf(bound):
                return bounds[i - 1] if i > 0 else None
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
    return None


class StatsFeed:
    """Builds snapshots from a FleetSource and remembers enough of the past for rates."""

    def __init__(self, source: FleetSource, clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._clock = clock
        self._samples: collections.deque[_Sample] = collections.deque()
        self._history: dict[str, _History] = {}
        self._bounds: list[float] = []
        self._last: dict[str, Any] | None = None
        self._last_at = -math.inf

    def snapshot(self, max_age: float = MAX_AGE) -> dict[str, Any]:
        """The fleet now; a snapshot younger than `max_age` seconds is reused."""
        now = self._clock()
        if self._last is not None and now - self._last_at < max_age:
            return self._last
        self._last = self._build(now, self._source.ps(), self._source.status())
        self._last_at = now
        return self._last

    def _build(
        self, now: float, rows: Sequence[Mapping[str, Any]], status: Mapping[str, Any]
    ) -> dict[str, Any]:
        proxy = status.get("proxy")
        pools: Mapping[str, list[dict[str, Any]]] = (
            proxy.get("pools", {}) if isinstance(proxy, dict) else {}
        )
        sample = self._sample(now, pools)
        base = self._baseline(now)
        self._samples.append(sample)
        elapsed = now - base.at if base is not None else 0.0
        backends = {b["key"]: b for pool in pools.values() for b in pool}

        services: list[dict[str, Any]] = []
        described = status.get("services")
        if not isinstance(described, dict):
            described = {}
        by_service: dict[str, list[dict[str, Any]]] = {name: [] for name in described}
        for row in rows:
            by_service.setdefault(str(row["service"]), []).append(dict(row))
        for name, insts in by_service.items():
            summary = dict(described.get(name, {}))
            routed = name in pools
            keys = []
            for inst in insts:
                key = f"{inst['name']}@{inst['port']}"
                inst.update(self._traffic(key if routed else None, sample, base, elapsed, backends))
                if key in backends:
                    keys.append(key)
            summary.update(
                name=name,
                routed=routed,
                # A oneshot that finished is done, not down: counted apart from up / total.
                total=len(
                    current := [i for i in insts if not (_in_roll(i) or _done(i) or _idle(i))]
                ),
                up=sum(1 for i in current if i.get("ready")),
                completed=sum(1 for i in insts if _done(i)),
                cpu_percent=round(sum(float(i.get("cpu_percent") or 0.0) for i in insts), 1),
                rss_bytes=sum(int(i.get("rss_bytes") or 0) for i in insts),
                **self._service_traffic(routed, keys, sample, base, elapsed, backends),
                instances=insts,
            )
            summary["history"] = self._record(name, now, summary)
            services.append(summary)
        for gone in set(self._history) - set(by_service):
            del self._history[gone]

        daemon = {k: status.get(k) for k in ("pid", "uptime_s", "config", "socket")}
        daemon["proxy"] = proxy.get("listen", []) if isinstance(proxy, dict) else None
        return {
            "ts": time.time(),
            "project": status.get("project"),
            "daemon": daemon,
            "window_s": round(elapsed, 3),
            "totals": {
                "instances": sum(s["total"] for s in services),
                "up": sum(s["up"] for s in services),
                "completed": sum(s["completed"] for s in services),
                "rps": round(sum(s["rps"] or 0.0 for s in services), 2),
                "in_flight": sum(s["in_flight"] or 0 for s in services),
                "cpu_percent": round(sum(s["cpu_percent"] for s in services), 1),
                "rss_bytes": sum(s["rss_bytes"] for s in services),
            },
            "services": services,
        }

    # --- counters over the window ------------------------------------------------------------

    def _sample(self, now: float, pools: Mapping[str, list[dict[str, Any]]]) -> _Sample:
        backends: dict[str, _Counters] = {}
        for pool in pools.values():
            for b in pool:
                buckets: dict[str, int] = b.get("latency_buckets", {})
                if not self._bounds and buckets:
                    self._bounds = bucket_bounds(list(buckets))
                backends[b["key"]] = _Counters(int(b.get("requests", 0)), tuple(buckets.values()))
        return _Sample(now, backends)

    def _baseline(self, now: float) -> _Sample | None:
        """The newest sample at least WINDOW old (or the oldest one there is), for deltas.

        Samples are taken only while someone watches: one from an hour ago would turn "now"
        into an hour's average, so past STALE there is no baseline (no rate) instead.
        """
        while self._samples and now - self._samples[0].at > STALE:
            self._samples.popleft()
        while len(self._samples) > 1 and now - self._samples[1].at >= WINDOW:
            self._samples.popleft()
        return self._samples[0] if self._samples else None

    def _delta(self, key: str, sample: _Sample, base: _Sample | None) -> _Counters | None:
        current = sample.backends.get(key)
        if current is None or base is None:
            return None
        before = base.backends.get(key)
        if before is None:  # a backend newer than the window: all its counts are recent
            return current
        return _Counters(
            current.requests - before.requests,
            tuple(a - b for a, b in zip(current.buckets, before.buckets, strict=True)),
        )

    def _traffic(
        self,
        key: str | None,
        sample: _Sample,
        base: _Sample | None,
        elapsed: float,
        backends: Mapping[str, dict[str, Any]],
    ) -> dict[str, Any]:
        if key is None or key not in backends:
            return {"requests": None, "rps": None, "p99_ms": None, "in_flight": None}
        delta = self._delta(key, sample, base)
        return {
            "requests": int(backends[key].get("requests", 0)),
            "in_flight": int(backends[key].get("in_flight", 0)),
            **self._rates([delta] if delta else [], elapsed),
        }

    def _service_traffic(
        self,
        routed: bool,
        keys: list[str],
        sample: _Sample,
        base: _Sample | None,
        elapsed: float,
        backends: Mapping[str, dict[str, Any]],
    ) -> dict[str, Any]:
        if not routed:
            return {"requests": None, "rps": None, "p99_ms": None, "in_flight": None}
        deltas = [d for key in keys if (d := self._delta(key, sample, base)) is not None]
        return {
            "requests": sum(int(backends[k].get("requests", 0)) for k in keys),
            "in_flight": sum(int(backends[k].get("in_flight", 0)) for k in keys),
            **self._rates(deltas, elapsed),
        }

    def _rates(self, deltas: list[_Counters], elapsed: float) -> dict[str, float | None]:
        if elapsed <= 0:
            return {"rps": None, "p99_ms": None}
        counts = [sum(col) for col in zip(*(d.buckets for d in deltas), strict=True)]
        p99 = quantile(0.99, self._bounds, counts) if counts else None
        return {
            "rps": round(sum(d.requests for d in deltas) / elapsed, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }

    # --- sparklines ------------------------------------------------------------------------------

    def _record(self, name: str, now: float, summary: dict[str, Any]) -> dict[str, list[Any]]:
        history = self._history.setdefault(name, _History())
        # Slots, not "a second since the last point": ticks of 0.99 s must not skip every other.
        slot = int(now // HISTORY_STEP)
        if summary["routed"] and summary["rps"] is not None and slot != history.slot:
            missed = slot - history.slot - 1
            if history.slot >= 0 and missed > 1:
                # Nobody watched for a while: unknown, drawn as a gap, not as yesterday's traffic
                # glued to today's. (One missed slot is tick jitter, not a gap.)
                for _ in range(min(missed, HISTORY_POINTS)):
                    history.rps.append(None)
                    history.p99_ms.append(None)
            history.slot = slot
            history.rps.append(summary["rps"])
            history.p99_ms.append(summary["p99_ms"])
        return {"rps": list(history.rps), "p99_ms": list(history.p99_ms)}
