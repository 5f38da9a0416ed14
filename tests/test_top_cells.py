"""What `corral top` puts in its table, from a snapshot: columns per width, cells, sparklines."""

from __future__ import annotations

import time
from typing import Any

import pytest

from supervisor.top import cells


def _snapshot() -> dict[str, Any]:
    web = {
        "name": "web",
        "phase": "running",
        "desired": 2,
        "up": 1,
        "total": 2,
        "routed": True,
        "cpu_percent": 3.0,
        "rss_bytes": 40 << 20,
        "rps": 12.5,
        "p99_ms": 42.0,
        "in_flight": 3,
        "error": None,
        "history": {"rps": [1.0, 2.0, 4.0, 8.0], "p99_ms": [5.0, None, 40.0, 42.0]},
        "instances": [
            {
                "service": "web",
                "name": "web.1",
                "state": "ready",
                "pid": 101,
                "port": 9001,
                "uptime_s": 125.0,
                "restarts": 0,
                "cpu_percent": 2.0,
                "rss_bytes": 20 << 20,
                "rps": 12.5,
                "p99_ms": 42.0,
                "in_flight": 3,
                "generation": 1,
                "detail": "",
            },
            {
                "service": "web",
                "name": "web.2",
                "state": "failed",
                "pid": None,
                "port": 9002,
                "uptime_s": 0,
                "restarts": 5,
                "cpu_percent": 0.0,
                "rss_bytes": 0,
                "rps": None,
                "p99_ms": None,
                "in_flight": None,
                "generation": 2,
                "detail": "crashed 5 times in 60s",
                "next_retry_at": time.time() + 90,
            },
        ],
    }
    worker = {
        "name": "worker",
        "phase": "running",
        "desired": 1,
        "up": 1,
        "total": 1,
        "routed": False,
        "cpu_percent": 0.5,
        "rss_bytes": 8 << 20,
        "rps": None,
        "p99_ms": None,
        "in_flight": None,
        "error": None,
        "history": {"rps": [], "p99_ms": []},
        "instances": [
            {
                "service": "worker",
                "name": "worker.1",
                "state": "running",
                "pid": 103,
                "port": None,
                "uptime_s": 3700.0,
                "restarts": 0,
                "cpu_percent": 0.5,
                "rss_bytes": 8 << 20,
                "rps": None,
                "p99_ms": None,
                "in_flight": None,
                "generation": 3,
                "detail": "",
            }
        ],
    }
    return {
        "project": "shop",
        "daemon": {"pid": 42, "uptime_s": 61.0, "proxy": ["127.0.0.1:8080"]},
        "totals": {
            "instances": 3,
            "up": 2,
            "rps": 12.5,
            "in_flight": 3,
            "cpu_percent": 3.5,
            "rss_bytes": 48 << 20,
        },
        "services": [web, worker],
    }


@pytest.mark.parametrize(
    ("width", "keys"),
    [
        (40, ["name", "state", "cpu", "mem"]),
        (60, ["name", "state", "pid", "cpu", "mem", "rps", "p99"]),
        (100, "name state pid port uptime restarts cpu mem rps p99 inflight".split()),
        (200, [c.key for c in cells.COLUMNS if c.key != "retry"]),
    ],
)
def test_narrow_terminals_keep_the_essential_columns(width: int, keys: list[str]) -> None:
    assert [c.key for c in cells.columns_for(width)] == keys


def test_next_retry_shows_only_when_the_daemon_reports_it() -> None:
    snap = _snapshot()
    assert cells.has_retry(snap)
    assert "retry" in [c.key for c in cells.columns_for(120, retry=True)]
    assert "retry" not in [c.key for c in cells.columns_for(90, retry=True)]
    del snap["services"][0]["instances"][1]["next_retry_at"]
    assert not cells.has_retry(snap)


def test_rows_are_a_service_line_then_its_instances() -> None:
    rows = cells.rows(_snapshot(), {})
    assert [(r.key, r.target, r.service) for r in rows] == [
        ("svc:web", "web", "web"),
        ("inst:web.1#1", "web.1", "web"),
        ("inst:web.2#2", "web.2", "web"),
        ("svc:worker", "worker", "worker"),
        ("inst:worker.1#3", "worker.1", "worker"),
    ]
    web, one, two, worker, w1 = ({k: t.plain for k, t in r.cells.items()} for r in rows)
    assert (web["name"], web["state"], web["rps"], web["p99"], web["inflight"]) == (
        "▾ web",
        "1/2 up",
        "12",  # from 10 on, whole numbers: the column stays narrow
        "42ms",
        "3",
    )
    assert web["restarts"] == "5" and web["mem"] == "40.0M"
    assert (one["state"], one["pid"], one["port"], one["uptime"]) == (
        "● ready",
        "101",
        "9001",
        "2m05s",
    )
    # A failed instance: the state word and symbol (no colour needed), when it is retried.
    assert (two["state"], two["pid"], two["cpu"], two["mem"]) == ("✖ failed", "-", "-", "-")
    assert two["retry"] in ("in 1m29s", "in 1m30s")
    assert two["detail"] == "crashed 5 times in 60s"
    assert (worker["trend"], worker["rps"]) == ("not proxied", "")
    assert (w1["uptime"], w1["port"], w1["rps"]) == ("1h01m", "-", "-")


def test_service_notes_show_cold_starts_and_the_last_scale_only_when_present() -> None:
    snap = _snapshot()
    plain = cells.service_row(snap["services"][0], {}).cells["detail"].plain
    assert plain == ""
    snap["services"][0]["cold_starts"] = 7
    scaled = {"web": {"kind": "scale", "service": "web", "new": "2", "ts": time.time() - 5}}
    plain = cells.service_row(snap["services"][0], scaled).cells["detail"].plain
    assert plain.startswith("cold starts 7 · scaled to 2 ") and plain.endswith(" ago")


def test_a_finished_oneshot_reads_completed() -> None:
    svc = {**_snapshot()["services"][1], "total": 0, "up": 0, "completed": 1}
    assert cells.service_row(svc, {}).cells["state"].plain == "✓ completed"
    snap = _snapshot()
    snap["totals"]["completed"] = 1
    assert "2/3 up · 1 done" in cells.title(snap, connected=True).plain


def test_every_state_has_a_symbol_and_its_name() -> None:
    for state, (symbol, _colour) in cells.STATES.items():
        assert cells.state_text(state).plain == f"{symbol} {state}"
    assert len({symbol for symbol, _ in cells.STATES.values()}) >= 7


def test_sparkline_scales_to_its_peak_and_leaves_gaps() -> None:
    assert cells.sparkline([0.0, 1.0, 2.0, 4.0, 8.0], 10) == "▁▂▃▅█"
    assert cells.sparkline([1.0, None, 1.0], 10) == "█ █"
    assert cells.sparkline([100.0, 0.0, 4.0, 8.0], 3) == "▁▅█"  # the last `width`, from 0
    assert cells.sparkline([], 4) == "" and cells.sparkline([None], 4) == ""
    assert cells.sparkline([0.0, 0.0], 4) == "▁▁"


def test_title_and_detail() -> None:
    snap = _snapshot()
    title = cells.title(snap, connected=True).plain
    assert "shop" in title and "daemon 42 up 1m01s" in title and "2/3 up" in title
    assert "proxy 127.0.0.1:8080" in title and "12 req/s" in title
    assert "disconnected" in cells.title(snap, connected=False).plain
    assert "not reachable" in cells.title(None, connected=False).plain
    detail = cells.detail(snap["services"][0], 100).plain
    assert detail.startswith(" web   req/s ▂▃▅█ 12   p99 ▂ ██ 42ms   in flight 3")
    assert "not behind the proxy" in cells.detail(snap["services"][1], 100).plain
