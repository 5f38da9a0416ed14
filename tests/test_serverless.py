"""Scale to zero, end to end: a real daemon, real instances (tests/apps/slowweb.py), real HTTP
through its proxy. Every wait polls with a deadline; nothing here asserts a speed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE, STDOUT

import psutil
import pytest

from supervisor.daemon import Daemon
from supervisor.errors import TargetError
from supervisor.metrics import render
from supervisor.output import scale_lines

from .conftest import (
    APPS,
    PY,
    http_exchange,
    running_daemon,
    token_processes,
    wait_until,
    write_config,
)


def _stack(scale: str, env: str = "", health: str = "") -> str:
    return f"""
[proxy]
listen = "127.0.0.1:0"
timeouts = {{ connect = "1s", read = "10s", idle = "2s" }}

[services.fn]
command = ["{PY}", "{APPS / "slowweb.py"}"]
port = "auto"
venv = false
stop_timeout = "2s"
backoff = {{ initial = "20ms", max = "200ms" }}
scale = {{ {scale} }}
{f"env = {{ {env} }}" if env else ""}
{health}
"""


@contextlib.asynccontextmanager
async def _daemon(tmp_path: Path, text: str) -> AsyncIterator[tuple[Daemon, int]]:
    async with running_daemon(write_config(tmp_path, text)) as daemon:
        yield daemon, daemon.traffic.addresses[0][1]


async def _get(port: int, path: str = "/") -> tuple[int, str, bytes]:
    return await http_exchange(port, path, timeout=20.0, host="fn")


def _scale(daemon: Daemon) -> dict[str, object]:
    status = daemon.status()["services"]["fn"]
    assert "autoscale" in status
    return dict(status["autoscale"])


def _live(daemon: Daemon) -> list[psutil.Process]:
    return token_processes(daemon.token)


def _scale_events(daemon: Daemon) -> list[tuple[str | None, str | None, str]]:
    return [(e.old, e.new, e.detail) for e in daemon.events.recent() if e.kind == "scale"]


def _starts(daemon: Daemon) -> int:
    return sum(
        1
        for e in daemon.events.recent()
        if e.kind == "state" and e.new == "starting" and e.instance and e.instance.startswith("fn")
    )


async def test_the_first_request_at_zero_waits_for_a_cold_start_and_succeeds(
    tmp_path: Path,
) -> None:
    text = _stack(
        'min = 0, max = 2, idle_timeout = "30s", cold_start_header = true', 'START_DELAY = "0.3"'
    )
    async with _daemon(tmp_path, text) as (daemon, port):
        assert not _live(daemon)  # nothing runs until a request comes
        rows = daemon.ps()
        assert [(r["name"], r["state"]) for r in rows] == [("fn", "idle")]
        await wait_until(lambda: _scale(daemon)["reason"] == "idle", what="the first decision")

        # Held in the proxy while the instance starts (it sleeps 0.3 s before listening).
        answers = await asyncio.gather(*(_get(port, f"/slow?ms=10&n={i}") for i in range(3)))
        assert [status for status, _, _ in answers] == [200, 200, 200], answers
        for _, head, _ in answers:
            assert "Server-Timing: cold-start;dur=" in head, head  # opt-in: it is on here
        # A warm request carries no cold-start header.
        status, head, _ = await _get(port, "/slow?ms=1")
        assert status == 200 and "cold-start" not in head

        scale = _scale(daemon)
        assert (scale["desired"], scale["ready"], scale["cold_starts"]) == (1, 1, 1)
        assert isinstance(scale["last_cold_start_ms"], float) and scale["last_cold_start_ms"] > 0
        (event,) = _scale_events(daemon)
        assert event[:2] == ("0", "1") and event[2].startswith("cold start"), event
        assert "target" in event[2] and "held" in event[2]  # the decision's inputs
        kinds = [(e.kind, e.new) for e in daemon.events.recent()]
        assert kinds.index(("scale", "1")) < kinds.index(("state", "starting"))  # why, then what
        text = render(daemon) + daemon.autoscaler_metrics()
        assert 'corral_cold_start_seconds_count{service="fn",kind="start"} 1' in text
        assert 'corral_scale_decisions_total{service="fn",direction="up"} 1' in text
        promtool = shutil.which("promtool")
        if promtool is not None:  # the real linter, where installed (it is in CI)
            proc = await asyncio.create_subprocess_exec(
                promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
            )
            out, _ = await proc.communicate(text.encode())
            assert proc.returncode == 0, out.decode()
        (line,) = scale_lines(daemon.status())
        assert line.startswith("fn: autoscaled 0-2, 1 ready of 1 desired: "), line
        assert "1 cold start" in line


async def test_a_burst_scales_out_then_back_in_to_zero_without_a_failure(tmp_path: Path) -> None:
    scale = 'min = 0, max = 4, target = 1, window = "2s", panic_window = "1s", idle_timeout = "2s"'
    async with _daemon(tmp_path, _stack(scale)) as (daemon, port):
        stop = asyncio.Event()
        statuses: list[int] = []
        seen: set[str] = set()

        async def client() -> None:
            while not stop.is_set():
                status, _, body = await _get(port, "/slow?ms=300")
                statuses.append(status)
                if status == 200:
                    seen.add(json.loads(body)["instance"])

        clients = [asyncio.create_task(client()) for _ in range(8)]
        try:
            await wait_until(lambda: len(seen) >= 3, timeout=30, what="served by >= 3 instances")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        ups = [e for e in _scale_events(daemon) if int(e[1] or 0) > int(e[0] or 0)]
        # At zero the held requests say how many to start (ceil(held / target)); a burst on
        # those running scales out further.
        assert ups and max(int(e[1] or 0) for e in ups) >= 3, ups
        assert ups[0][2].startswith("cold start:") and "in flight" in ups[0][2], ups

        # No requests: down (draining first), and after idle_timeout to zero, nothing left.
        await wait_until(
            lambda: (
                _scale(daemon)["desired"] == 0
                and [r["state"] for r in daemon.ps()] == ["idle"]
                and not _live(daemon)
            ),
            timeout=30,
            what="back to zero with no process left",
        )
        downs = [e for e in _scale_events(daemon) if int(e[1] or 0) < int(e[0] or 0)]
        assert downs and downs[-1][1] == "0" and "idle for 2s" in downs[-1][2], downs


async def test_concurrency_one_never_lets_two_requests_onto_one_instance(tmp_path: Path) -> None:
    scale = 'min = 0, max = 3, concurrency = 1, window = "2s", idle_timeout = "30s"'
    async with _daemon(tmp_path, _stack(scale)) as (daemon, port):
        answers = await asyncio.gather(*(_get(port, "/slow?ms=150") for _ in range(12)))
        assert [a[0] for a in answers] == [200] * 12, answers
        bodies = [json.loads(a[2]) for a in answers]
        # The app counts the requests it has under way, itself included: always 1.
        assert {b["concurrent"] for b in bodies} == {1}, bodies
        assert _scale(daemon)["desired"] <= 3


async def test_idle_timeout_counts_from_the_last_request_not_the_scale_up(tmp_path: Path) -> None:
    async with _daemon(tmp_path, _stack('min = 0, max = 1, idle_timeout = "1s"')) as (daemon, port):
        first = json.loads((await _get(port, "/slow?ms=1"))[2])["pid"]
        began = time.monotonic()
        # Requests for well past idle_timeout after the scale-up: the instance stays.
        while time.monotonic() - began < 2.5:
            status, _, body = await _get(port, "/slow?ms=50")
            assert status == 200 and json.loads(body)["pid"] == first
        last = time.time()
        await wait_until(lambda: not _live(daemon), timeout=20, what="scaled to zero")
        (to_zero,) = [e for e in daemon.events.recent() if e.kind == "scale" and e.new == "0"]
        assert to_zero.ts - last >= 0.9, "stopped before idle_timeout after the last request"
        assert "idle for 1s" in to_zero.detail
        await wait_until(lambda: _scale(daemon)["reason"] == "idle", what="idle at zero")


async def test_min_keeps_instances_through_idleness(tmp_path: Path) -> None:
    scale = 'min = 1, max = 3, target = 1, window = "1s", idle_timeout = "1s"'
    async with _daemon(tmp_path, _stack(scale)) as (daemon, port):
        await wait_until(lambda: _scale(daemon)["ready"] == 1, what="min 1 ready")
        pid = json.loads((await _get(port, "/slow?ms=1"))[2])["pid"]
        idle_since = time.monotonic()
        await wait_until(
            lambda: time.monotonic() - idle_since > 2.5 and _scale(daemon)["reason"] == "at min 1",
            timeout=20,
            what="idle at min 1",
        )
        assert _scale(daemon)["desired"] == 1
        assert [p.pid for p in _live(daemon)] == [pid]


async def test_an_instance_that_never_gets_ready_gives_503_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    text = _stack('min = 0, max = 2, cold_start_timeout = "1s"', 'NEVER_READY = "1"')
    async with _daemon(tmp_path, text) as (daemon, port):
        status, _, body = await _get(port, "/")
        assert status == 503, body
        assert b"no instance of 'fn' became ready within 1s" in body, body
        await wait_until(lambda: not _live(daemon), timeout=20, what="nothing left running")
        assert _scale(daemon)["desired"] == 0
        events = _scale_events(daemon)
        assert events[-1][1] == "0" and events[-1][2].startswith("cold start failed"), events
        assert 'direction="cold_start_failed"} 1' in daemon.autoscaler_metrics()


async def test_an_instance_that_crashes_at_zero_traffic_does_not_loop(tmp_path: Path) -> None:
    text = _stack('min = 0, max = 2, idle_timeout = "30s"', 'CRASH_AFTER = "1"')
    async with _daemon(tmp_path, text) as (daemon, port):
        status, _, _ = await _get(port, "/slow?ms=1")
        assert status == 200
        # It exits right after answering; with no request waiting it is not started again.
        await wait_until(
            lambda: _scale(daemon)["desired"] == 0 and not _live(daemon),
            timeout=20,
            what="back at zero after the crash",
        )
        starts = _starts(daemon)
        await wait_until(
            lambda: _scale(daemon)["reason"] == "idle", timeout=5, what="the autoscaler settled"
        )
        await asyncio.sleep(0)
        assert _starts(daemon) == starts == 1
        # The next request starts it again.
        status, _, _ = await _get(port, "/slow?ms=1")
        assert status == 200


async def test_a_frozen_instance_resumes_and_answers(tmp_path: Path) -> None:
    health = 'health = { http = "/healthz", interval = "100ms", timeout = "80ms", retries = 1 }'
    text = _stack('min = 0, max = 1, idle_timeout = "1s", idle = "freeze"', health=health)
    async with _daemon(tmp_path, text) as (daemon, port):
        pid = json.loads((await _get(port, "/slow?ms=1"))[2])["pid"]
        await wait_until(
            lambda: [r["state"] for r in daemon.ps()] == ["frozen"], timeout=20, what="frozen"
        )
        (row,) = daemon.ps()
        assert row["pid"] == pid and "frozen" in str(row["detail"])
        assert _scale(daemon)["frozen"] is True
        # Health checks are paused: many intervals later it is still frozen, never unhealthy.
        frozen_at = time.monotonic()
        await wait_until(lambda: time.monotonic() - frozen_at > 1.0, what="a second frozen")
        assert [r["state"] for r in daemon.ps()] == ["frozen"]
        assert not [e for e in daemon.events.recent() if e.new == "unhealthy"]

        status, _, body = await _get(port, "/slow?ms=1")
        assert status == 200 and json.loads(body)["pid"] == pid  # the same process, thawed
        scale = _scale(daemon)
        assert (scale["thaws"], scale["cold_starts"], scale["frozen"]) == (1, 1, False)
        assert 'direction="thaw"} 1' in daemon.autoscaler_metrics()
        assert 'direction="freeze"} 1' in daemon.autoscaler_metrics()
        # Frozen again, then the daemon stops: it is thawed to see its stop signal (the
        # fixture checks nothing is left).
        await wait_until(
            lambda: [r["state"] for r in daemon.ps()] == ["frozen"], timeout=20, what="refrozen"
        )
        # A restart at zero does not bring the frozen one back to life only for it to be
        # frozen or stopped again: it goes, and the next request starts a fresh one.
        starts = _starts(daemon)
        await daemon.restart(["fn"])
        await wait_until(lambda: not _live(daemon), what="the frozen instance gone")
        assert [r["state"] for r in daemon.ps()] == ["idle"] and _starts(daemon) == starts
        status, _, body = await _get(port, "/slow?ms=1")
        assert status == 200 and json.loads(body)["pid"] != pid
        # Frozen once more for the daemon's stop (thawed to see its stop signal).
        await wait_until(
            lambda: [r["state"] for r in daemon.ps()] == ["frozen"], timeout=20, what="frozen 3"
        )


async def test_a_service_stopped_by_order_refuses_at_once_and_start_holds_again(
    tmp_path: Path,
) -> None:
    async with _daemon(tmp_path, _stack('min = 0, max = 2, idle_timeout = "30s"')) as (
        daemon,
        port,
    ):
        assert (await _get(port, "/slow?ms=1"))[0] == 200
        with pytest.raises(TargetError, match="fn is autoscaled"):
            await daemon.scale({"fn": 3})  # the autoscaler owns the count
        await daemon.stop(["fn"])
        await wait_until(lambda: not _live(daemon), what="stopped")
        status, _, body = await _get(port, "/slow?ms=1")
        assert status == 503 and b"fn is stopped (corral start fn)" in body, body
        scale = _scale(daemon)  # what runs: nothing, and why
        assert (scale["desired"], scale["reason"]) == (0, "stopped (corral start fn)"), scale
        starts = _starts(daemon)
        await daemon.start(["fn"])
        await daemon.restart(["fn"])
        # At zero and min 0, neither spawns an instance only for the autoscaler to stop it.
        await wait_until(lambda: _scale(daemon)["reason"] == "idle", what="idle again")
        assert _starts(daemon) == starts and not _live(daemon)
        assert [r["state"] for r in daemon.ps()] == ["idle"]
        status, _, _ = await _get(port, "/slow?ms=1")
        assert status == 200


async def test_a_reload_moves_min_and_can_turn_autoscaling_off(tmp_path: Path) -> None:
    async with _daemon(tmp_path, _stack('min = 0, max = 3, idle_timeout = "30s"')) as (
        daemon,
        port,
    ):
        await wait_until(lambda: _scale(daemon)["reason"] == "idle", what="idle at zero")
        path = daemon.plan.path
        path.write_text(_stack('min = 1, max = 3, idle_timeout = "30s"'))
        changes = await daemon.reload()
        assert changes["changes"] == ["~ fn: autoscaled 1-3, settings updated in place"]
        assert _scale_events(daemon)[-1] == ("0", "1", "reload")
        # No request: min alone brings one up.
        await wait_until(lambda: _scale(daemon)["ready"] == 1, timeout=20, what="min 1 ready")
        path.write_text(_stack("").replace("scale = {  }", "instances = 2"))
        await daemon.reload()
        await wait_until(
            lambda: [r["state"] for r in daemon.ps()] == ["ready", "ready"],
            timeout=20,
            what="two fixed instances",
        )
        assert "autoscale" not in daemon.status()["services"]["fn"]
        await wait_until(lambda: daemon.autoscaler_metrics() == "", what="no longer followed")
        assert (await _get(port, "/slow?ms=1"))[0] == 200


async def test_a_reload_to_fixed_instances_below_the_autoscaled_count_scales_in(
    tmp_path: Path,
) -> None:
    # Autoscaled from min 1 up to max 2, then `scale` replaced by `instances = 1`: the
    # autoscaled spec already says instances = scale.min = 1, so the diff sees no count change.
    scale = 'min = 1, max = 2, target = 1, window = "30s", idle_timeout = "60s"'
    async with _daemon(tmp_path, _stack(scale)) as (daemon, port):
        await wait_until(lambda: _scale(daemon)["ready"] == 1, timeout=20, what="min 1 ready")
        sent = [asyncio.create_task(_get(port, "/slow?ms=1500")) for _ in range(6)]
        await wait_until(lambda: _scale(daemon)["ready"] == 2, timeout=20, what="two ready")
        assert [a[0] for a in await asyncio.gather(*sent)] == [200] * 6
        assert _scale(daemon)["desired"] == 2  # the 30 s window still wants both
        daemon.plan.path.write_text(_stack("").replace("scale = {  }", "instances = 1"))
        changes = await daemon.reload()
        assert "~ fn: scaling to 1" in changes["changes"], changes
        await wait_until(
            lambda: [(r["name"], r["state"]) for r in daemon.ps()] == [("fn.1", "ready")],
            timeout=20,
            what="one fixed instance",
        )
        assert daemon.services["fn"].desired == 1
        assert _scale_events(daemon)[-1] == ("2", "1", "reload")
        assert (await daemon.reload())["changes"] == []  # nothing left to do
        assert (await _get(port, "/slow?ms=1"))[0] == 200


async def test_after_a_burst_one_request_at_zero_starts_one_instance(tmp_path: Path) -> None:
    # idle_timeout well inside the window: at zero the window still remembers the burst, and
    # a panic may still be on; neither may count for the next request.
    scale = 'min = 0, max = 4, target = 1, window = "10s", panic_window = "1s", idle_timeout = "1s"'
    async with _daemon(tmp_path, _stack(scale)) as (daemon, port):
        answers = await asyncio.gather(*(_get(port, "/slow?ms=400") for _ in range(12)))
        assert [a[0] for a in answers] == [200] * 12
        assert max(int(e[1] or 0) for e in _scale_events(daemon)) >= 2
        await wait_until(
            lambda: _scale(daemon)["desired"] == 0 and not _live(daemon),
            timeout=30,
            what="back to zero",
        )
        to_zero = _scale_events(daemon)[-1]
        assert to_zero[1] == "0" and "idle for 1s (stable;" in to_zero[2], to_zero
        assert "(panic;" not in to_zero[2], to_zero  # no traffic ended the panic
        assert _scale(daemon)["mode"] == "stable"

        assert (await _get(port, "/slow?ms=1"))[0] == 200
        cold = _scale_events(daemon)[-1]
        assert cold[:2] == ("0", "1") and cold[2].startswith("cold start: 1 request held"), cold
        await wait_until(lambda: _scale(daemon)["ready"] == 1, what="one ready")
        assert _scale(daemon)["desired"] == 1 and len(_live(daemon)) == 1


async def test_shutdown_answers_held_requests_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.server")
    text = _stack('min = 0, max = 2, cold_start_timeout = "30s"', 'START_DELAY = "30"')
    async with _daemon(tmp_path, text) as (daemon, port):
        pool = daemon.traffic.pools["fn"]
        held = [asyncio.create_task(_get(port, f"/slow?ms=1&i={i}")) for i in range(6)]
        await wait_until(lambda: pool.queued == 6, what="six requests held")
        daemon.request_shutdown()
        answers = await asyncio.gather(*held)
        assert [a[0] for a in answers] == [503] * 6, answers
        assert all(b"the daemon is shutting down" in a[2] for a in answers), answers
    # Nothing was left for the proxy's grace to wait on.
    assert not [r for r in caplog.records if "still open" in r.getMessage()]


async def test_held_requests_are_forwarded_in_arrival_order(tmp_path: Path) -> None:
    # One instance taking one request at a time: the order they reach it is the order the
    # proxy handed them on.
    scale = 'min = 0, max = 1, concurrency = 1, idle_timeout = "30s"'
    async with _daemon(tmp_path, _stack(scale, 'START_DELAY = "1"')) as (daemon, port):
        pool = daemon.traffic.pools["fn"]
        sent = []
        for i in range(5):
            sent.append(asyncio.create_task(_get(port, f"/slow?ms=20&i={i}")))
            await wait_until(lambda n=i + 1: pool.queued == n, what=f"request {i} held")
        answers = await asyncio.gather(*sent)
        assert [a[0] for a in answers] == [200] * 5, answers
        assert [json.loads(a[2])["seq"] for a in answers] == [1, 2, 3, 4, 5]


async def test_the_hold_bound_is_exact_under_a_flood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many requests parsed in one loop iteration: each must see the places taken before it.
    monkeypatch.setattr("supervisor.traffic.MAX_HELD", 20)
    text = _stack('min = 0, max = 1, cold_start_timeout = "30s"', 'START_DELAY = "30"')
    async with _daemon(tmp_path, text) as (daemon, port):
        pool = daemon.traffic.pools["fn"]
        flood = [asyncio.create_task(_get(port, f"/slow?ms=1&i={i}")) for i in range(80)]
        await wait_until(
            lambda: sum(1 for t in flood if t.done()) == 60, timeout=20, what="60 refused"
        )
        refused = [t.result() for t in flood if t.done()]
        assert all(a[0] == 503 and b"20 requests are already waiting" in a[2] for a in refused)
        assert pool.queued == 20  # 60 refused + 20 held: never one more than the bound
        daemon.request_shutdown()  # the 20 held get their answer at once
        answers = await asyncio.gather(*flood)
        assert sum(1 for a in answers if b"the daemon is shutting down" in a[2]) == 20


async def test_held_requests_learn_at_once_that_the_instance_failed_at_start(
    tmp_path: Path,
) -> None:
    # It exits at once, every time: given up on (failed) long before cold_start_timeout.
    text = _stack('min = 0, max = 2, cold_start_timeout = "60s"').replace(
        f'command = ["{PY}", "{APPS / "slowweb.py"}"]',
        f'command = ["{PY}", "-c", "raise SystemExit(3)"]',
    )
    async with _daemon(tmp_path, text) as (daemon, port):
        answers = await asyncio.gather(*(_get(port, "/") for _ in range(3)))
        assert [a[0] for a in answers] == [503] * 3, answers
        for _, _, body in answers:
            assert b"fn.1 failed at start" in body and b"became ready" not in body, body
        await wait_until(lambda: not _live(daemon), timeout=20, what="nothing left running")
        assert _scale(daemon)["desired"] == 0
        events = _scale_events(daemon)
        assert events[-1][1] == "0" and events[-1][2].startswith("cold start failed: fn.1"), events
