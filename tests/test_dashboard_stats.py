"""The stats snapshot's arithmetic: p99 from histogram buckets, rates over a window, sparklines.

Pure: the feed reads a fleet described as plain data (what `Daemon.ps()` and `Daemon.status()`
return) on an injected clock, so windows and gaps are exact. The same feed against a real
daemon and real proxy traffic is tested in test_dashboard_api.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from proxy.pool import LATENCY_BUCKETS
from supervisor import stats
from supervisor.stats import StatsFeed, bucket_bounds, quantile

KEYS = [f"{b:g}" for b in LATENCY_BUCKETS] + ["+Inf"]
BOUNDS = bucket_bounds(KEYS)


def test_bucket_bounds_read_prometheus_labels() -> None:
    assert BOUNDS[:3] == [0.001, 0.0025, 0.005]
    assert math.isinf(BOUNDS[-1])


def test_quantile_interpolates_inside_the_bucket() -> None:
    counts = [0] * len(BOUNDS)
    counts[3] = 100  # all in (0.005, 0.01]
    # Rank 99 of 100 sits 99% of the way through the bucket, as Prometheus interpolates.
    assert quantile(0.99, BOUNDS, counts) == pytest.approx(0.005 + 0.005 * 0.99)
    assert quantile(0.5, BOUNDS, counts) == pytest.approx(0.0075)


def test_quantile_picks_the_bucket_holding_the_rank() -> None:
    counts = [0] * len(BOUNDS)
    counts[0] = 98  # fast
    counts[6] = 2  # (0.05, 0.1]: the slowest 2% decide p99
    assert quantile(0.99, BOUNDS, counts) == pytest.approx(0.05 + 0.05 * 0.5)
    assert quantile(0.5, BOUNDS, counts) == pytest.approx(0.001 * 50 / 98)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    counts = [0] * len(BOUNDS)
    counts[-1] = 5
    assert quantile(0.99, BOUNDS, counts) == 10.0


def test_quantile_without_observations_is_none() -> None:
    assert quantile(0.99, BOUNDS, [0] * len(BOUNDS)) is None


class Fleet:
    """A fleet as plain data, with counters a test moves by hand."""

    def __init__(self) -> None:
        self.requests = {"web.1@9001": 0, "web.2@9002": 0}
        self.buckets = {key: [0] * len(KEYS) for key in self.requests}
        self.in_flight = {"web.1@9001": 0, "web.2@9002": 0}

    def serve(self, key: str, n: int, bucket: int) -> None:
        self.requests[key] += n
        self.buckets[key][bucket] += n

    def ps(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            _row("web", i, 9000 + i, cpu=1.5, rss=10 << 20) for i in (1, 2)
        ]
        rows.append(_row("worker", 1, None, cpu=0.5, rss=5 << 20))
        return rows

    def status(self) -> dict[str, object]:
        pools = {
            "web": [
                {
                    "key": key,
                    "requests": self.requests[key],
                    "in_flight": self.in_flight[key],
                    "latency_buckets": dict(zip(KEYS, self.buckets[key], strict=True)),
                }
                for key in self.requests
            ]
        }
        service = {"desired": 2, "configured": 2, "phase": "running", "error": None}
        return {
            "project": "shop",
            "pid": 42,
            "uptime_s": 5.0,
            "config": "/x/corral.toml",
            "socket": "/x/.corral/corral.sock",
            "proxy": {"listen": ["127.0.0.1:8080"], "pools": pools},
            "services": {"web": service, "worker": {**service, "desired": 1}},
        }


def _row(service: str, index: int, port: int | None, cpu: float, rss: int) -> dict[str, Any]:
    return {
        "service": service,
        "index": index,
        "name": f"{service}.{index}",
        "pid": 1000 + index,
        "port": port,
        "state": "ready" if port else "running",
        "ready": True,
        "restarts": 0,
        "uptime_s": 5.0,
        "generation": index,
        "retiring": False,
        "incoming": False,
        "cpu_percent": cpu,
        "rss_bytes": rss,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _service(snap: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in snap["services"] if s["name"] == name)


def test_first_snapshot_has_no_rates_yet() -> None:
    feed = StatsFeed(Fleet(), clock=Clock())
    snap = feed.snapshot()
    web = _service(snap, "web")
    assert (web["rps"], web["p99_ms"], web["requests"], web["in_flight"]) == (None, None, 0, 0)
    assert snap["totals"] == {
        "instances": 3,
        "up": 3,
        "completed": 0,
        "rps": 0.0,
        "in_flight": 0,
        "cpu_percent": 3.5,
        "rss_bytes": 25 << 20,
    }
    assert [s["name"] for s in snap["services"]] == ["web", "worker"]
    assert _service(snap, "worker")["routed"] is False


def test_rates_and_p99_over_the_window_per_instance_and_service() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    feed.snapshot()
    clock.now += 2.0
    fleet.serve("web.1@9001", 30, bucket=2)  # (2.5ms, 5ms]
    fleet.serve("web.2@9002", 10, bucket=4)  # (10ms, 25ms]
    fleet.in_flight["web.2@9002"] = 3
    snap = feed.snapshot()

    web = _service(snap, "web")
    assert snap["window_s"] == 2.0
    assert (web["rps"], web["requests"], web["in_flight"]) == (20.0, 40, 3)
    # Rank 39.6 of 40 lies in web.2's bucket: 10 + 15 * 9.6/10 ms.
    assert web["p99_ms"] == pytest.approx(24.4)
    one, two = web["instances"]
    assert (one["rps"], one["requests"], one["p99_ms"]) == (
        15.0,
        30,
        pytest.approx(4.975, abs=0.01),
    )
    assert (two["rps"], two["in_flight"]) == (5.0, 3)
    assert snap["totals"]["rps"] == 20.0
    worker = _service(snap, "worker")["instances"][0]
    assert (worker["rps"], worker["p99_ms"], worker["in_flight"]) == (None, None, None)


def test_the_window_slides() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    for _ in range(6):  # one second apart, 10 requests a second
        feed.snapshot()
        clock.now += 1.0
        fleet.serve("web.1@9001", 10, bucket=0)
    fleet.serve("web.1@9001", 90, bucket=0)  # a burst in the last second
    snap = feed.snapshot()
    # The newest sample at least WINDOW (3 s) old is 3 s back: (30 + 90) / 3.
    assert snap["window_s"] == stats.WINDOW
    assert _service(snap, "web")["rps"] == 40.0


def test_a_stale_baseline_gives_no_rate_rather_than_a_long_average() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    feed.snapshot()
    clock.now += 3600
    fleet.serve("web.1@9001", 3600, bucket=0)
    assert _service(feed.snapshot(), "web")["rps"] is None


def test_snapshots_are_shared_for_max_age() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    first = feed.snapshot()
    clock.now += stats.MAX_AGE / 2
    assert feed.snapshot() is first
    assert feed.snapshot(0.0) is not first  # after an event the stream asks for a fresh one


def test_a_replacement_backend_counts_from_zero() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    feed.snapshot()
    clock.now += 1.0
    # A rolling restart: web.2 moved to a fresh port with fresh counters.
    del fleet.requests["web.2@9002"], fleet.in_flight["web.2@9002"]
    fleet.requests["web.2@9102"], fleet.in_flight["web.2@9102"] = 0, 0
    fleet.buckets["web.2@9102"] = [0] * len(KEYS)
    fleet.serve("web.2@9102", 7, bucket=1)
    rows = [r for r in fleet.ps() if r["name"] != "web.2"]
    rows.insert(1, {**_row("web", 2, 9102, cpu=0, rss=0), "generation": 9})
    fleet.ps = lambda: rows  # type: ignore[method-assign]
    web = _service(feed.snapshot(), "web")
    assert web["rps"] == 7.0
    assert web["instances"][1]["requests"] == 7


def test_history_has_one_point_per_second_and_gaps_for_unwatched_time() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    feed.snapshot()  # no rate yet: no point
    for _ in range(3):
        clock.now += 0.5
        fleet.serve("web.1@9001", 5, bucket=0)
        feed.snapshot()
    history = _service(feed.snapshot(0.0), "web")["history"]
    assert history["rps"] == [10.0, 10.0]  # 1000.5 is slot 1000; 1001.0 and 1001.5 share 1001
    clock.now += 30  # nobody watched for 30 s (past STALE: no rate on return)...
    feed.snapshot()
    clock.now += 1
    fleet.serve("web.1@9001", 4, bucket=0)
    history = _service(feed.snapshot(), "web")["history"]
    # ...shows as a gap (None), not as old traffic glued to new.
    assert history["rps"][:2] == [10.0, 10.0]
    assert history["rps"][-1] == 4.0
    assert history["rps"][2:-1] == [None] * 30  # slots 1002 to 1031
    assert len(history["p99_ms"]) == len(history["rps"])


def test_history_is_bounded() -> None:
    fleet, clock = Fleet(), Clock()
    feed = StatsFeed(fleet, clock=clock)
    for _ in range(stats.HISTORY_POINTS + 50):
        feed.snapshot()
        clock.now += 1.0
    assert len(_service(feed.snapshot(), "web")["history"]["rps"]) == stats.HISTORY_POINTS


def test_unknown_service_fields_pass_through() -> None:
    # Figures a later daemon adds to a service (cold starts, autoscaler state) reach the views.
    fleet = Fleet()
    status = fleet.status

    def with_cold_starts() -> dict[str, object]:
        data = status()
        data["services"]["web"]["cold_starts"] = 4  # type: ignore[index]
        return data

    fleet.status = with_cold_starts  # type: ignore[method-assign]
    assert _service(StatsFeed(fleet, clock=Clock()).snapshot(), "web")["cold_starts"] == 4


def test_a_finished_oneshot_is_done_not_down() -> None:
    fleet = Fleet()
    rows = fleet.ps()
    done = {**_row("migrate", 1, None, cpu=0, rss=0), "pid": None, "state": "completed"}
    fleet.ps = lambda: [done, *rows]  # type: ignore[method-assign]
    snap = StatsFeed(fleet, clock=Clock()).snapshot()
    migrate = _service(snap, "migrate")
    assert (migrate["total"], migrate["up"], migrate["completed"]) == (0, 0, 1)
    assert (snap["totals"]["instances"], snap["totals"]["up"], snap["totals"]["completed"]) == (
        3,
        3,
        1,
    )
