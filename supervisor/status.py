"""The typed rows of `ps`, `status` and `/metrics`, built in one place."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NotRequired, TypedDict

from config.model import Plan
from config.units import format_duration

from .sampler import ProcessSample, StatsSnapshot
from .states import UP, Phase, State

if TYPE_CHECKING:
    from .autoscaler import ScaleStatus
    from .instance import Instance
    from .service import Service


class InstanceRow(TypedDict):
    """One line of `corral ps` (and one object of `GET /v1/ps`)."""

    service: str
    index: int
    name: str
    pid: int | None
    port: int | None
    state: str
    ready: bool
    detail: str
    restarts: int
    restart_reasons: dict[str, int]  # restarts by why: {"exit": 2, "memory_limit": 1}
    last_restart: str  # why it last restarted ("memory_limit: RSS 612MB above 512MB for 31s")
    caps: str  # its cgroup caps: "" (none set), "memory.max=…", or "… not applied: why"
    uptime_s: float
    last_exit: int | None
    generation: int
    retiring: bool  # the old incarnation of a roll, draining
    incoming: bool  # the replacement of a roll, starting
    phase: str  # the service's phase
    retry_at: float | None  # wall clock of the next retry of a failed instance
    cpu_percent: float
    rss_bytes: int


class ServiceStatus(TypedDict):
    desired: int
    configured: int
    phase: str
    error: str | None
    venv: str | None
    # Autoscaled services only: the autoscaler's view, and (for corral top and the dashboard)
    # how many starts from zero there were.
    autoscale: NotRequired[ScaleStatus]
    cold_starts: NotRequired[int]
    venv_build_s: float | None  # the last build's duration, in this daemon's life
    caps: str  # of its instances (as ps shows them), "" without cgroup caps


class DaemonStatus(TypedDict):
    """`GET /v1/status`."""

    project: str
    config: str
    pid: int
    uptime_s: float
    socket: str
    proxy: dict[str, object] | None
    services: dict[str, ServiceStatus]
    containment: str  # "cgroup <path>" or "token": how escaped processes are found


def instance_row(
    inst: Instance, *, phase: str, role: str, sample: ProcessSample, now: float
) -> InstanceRow:
    """The row of a spawned instance; `role` is "current", "incoming" or "retiring"."""
    return InstanceRow(
        service=inst.spec.name,
        index=inst.index,
        name=inst.name,
        pid=inst.pid,
        port=inst.port,
        state=inst.state.value,
        ready=inst.state in UP,
        detail=_detail(inst.detail, inst.retry_at, now),
        restarts=inst.restarts,
        restart_reasons=dict(inst.restart_reasons),
        last_restart=inst.last_restart,
        caps=inst.scope.caps.note() if inst.scope is not None else "",
        uptime_s=round(inst.uptime, 3),
        last_exit=inst.last_exit,
        generation=inst.generation,
        retiring=role == "retiring",
        incoming=role == "incoming",
        phase=phase,
        retry_at=inst.retry_at,
        cpu_percent=sample.cpu_percent if inst.pid is not None else 0.0,
        rss_bytes=sample.rss_bytes if inst.pid is not None else 0,
    )


def placeholder_row(
    service: str, index: int, *, state: str, detail: str, phase: str
) -> InstanceRow:
    """The row of an instance not spawned yet (waiting, building) or never (failed venv)."""
    return InstanceRow(
        service=service,
        index=index,
        name=f"{service}.{index}" if index else service,  # 0: the service itself (at zero)
        pid=None,
        port=None,
        state=state,
        ready=False,
        detail=detail,
        restarts=0,
        restart_reasons={},
        last_restart="",
        caps="",
        uptime_s=0.0,
        last_exit=None,
        generation=0,
        retiring=False,
        incoming=False,
        phase=phase,
        retry_at=None,
        cpu_percent=0.0,
        rss_bytes=0,
    )


def service_rows(service: Service, stats: StatsSnapshot, now: float) -> list[InstanceRow]:
    """A service's lines of `corral ps`: current instances, then a roll's incoming and
    retiring ones; or, before any is spawned, one placeholder per desired instance."""
    phase = service.phase
    roles = [
        *((service.instances[i], "current") for i in sorted(service.instances)),
        *((i, "incoming") for i in service.incoming),
        *((i, "retiring") for i in (*service.retiring, *service.shrinking)),
    ]
    rows = [
        instance_row(i, phase=phase, role=role, sample=stats.of(i.pid), now=now)
        for i, role in roles
    ]
    if rows:
        return rows
    if service.spec.scale is not None and phase in (Phase.RUNNING, Phase.ROLLING):
        # Scaled to zero: one line says so, or the service would vanish from ps.
        return [
            placeholder_row(
                service.name,
                0,
                state="idle",
                detail="scaled to zero: the next request starts an instance",
                phase=phase,
            )
        ]
    # Not spawned yet (waiting on dependencies, building the venv) or never will be (venv
    # build failed): still one row per desired instance, so ps shows why.
    state = {Phase.FAILED: "failed", Phase.HELD: "stopped", Phase.STOPPED: "stopped"}.get(
        phase, "starting"
    )
    return [
        placeholder_row(service.name, i, state=state, detail=service.error or phase, phase=phase)
        for i in range(1, service.desired + 1)
    ]


# Rows in these states need no order to stay as they are (for `up -d` and for READY=1).
SETTLED = frozenset({"failed", "completed", "stopped", "idle"})  # idle: scaled to zero


def settled(rows: Iterable[InstanceRow]) -> bool:
    """Has the start converged: every instance up, completed, failed or stopped?"""
    return all(r["ready"] or r["state"] in SETTLED for r in rows)


_PHASE_WORDS = {
    Phase.PENDING: "pending",
    Phase.WAITING: "waiting for dependencies",
    Phase.BUILDING: "building its venv",
    Phase.FAILED: "failed",
    Phase.HELD: "stopped",
    Phase.STOPPED: "stopped",
}


def service_summary(service: Service) -> str:
    """ "api 3/3 ready", "worker 1/1 running", "migrate 1/1 completed", "db failed"."""
    word = _PHASE_WORDS.get(service.phase)
    if word is not None:
        return f"{service.name} {word}"
    spec = service.spec
    states = [inst.state for inst in service.instances.values()]
    if spec.oneshot:
        want, word = State.COMPLETED, "completed"
    elif spec.has_port or spec.health is not None:
        want, word = State.READY, "ready"
    else:
        want, word = State.RUNNING, "running"
    text = f"{service.name} {states.count(want)}/{service.desired} {word}"
    notes = [
        f"{n} {state.value}"
        for state in (State.FAILED, State.BACKOFF)
        if (n := states.count(state))
    ]
    if service.phase is Phase.ROLLING:
        notes.append("rolling")
    return text + (f" ({', '.join(notes)})" if notes else "")


def summary_line(services: Iterable[Service]) -> str:
    """The one-line STATUS= systemd shows: every service's summary, in start order."""
    return ", ".join(service_summary(s) for s in services) or "no services"


def _detail(detail: str, retry_at: float | None, now: float) -> str:
    if retry_at is None:
        return detail
    # First: `corral ps` cuts DETAIL at 60 characters, and when is what users look for.
    return f"retry in {format_duration(max(0, round(retry_at - now)))}: {detail}"


def daemon_status(
    plan: Plan,
    started: float,
    proxy: dict[str, object] | None,
    services: Iterable[Service],
    containment: str,
    *,
    autoscale: Callable[[Service], ScaleStatus | None] = lambda _: None,
) -> DaemonStatus:
    """`GET /v1/status` of the daemon running `plan` since `started` (wall clock)."""
    described: dict[str, ServiceStatus] = {}
    for s in services:
        status = described[s.name] = ServiceStatus(
            desired=s.desired,
            configured=s.spec.instances,
            phase=s.phase.value,
            error=s.error,
            venv=str(s.venv) if s.venv else None,
            venv_build_s=(
                round(s.venv_build_seconds, 3) if s.venv_build_seconds is not None else None
            ),
            caps=next(
                (i.scope.caps.note() for i in s.instances.values() if i.scope is not None),
                "",
            ),
        )
        scaling = autoscale(s)
        if scaling is not None:
            status["autoscale"] = scaling
            status["cold_starts"] = scaling["cold_starts"]
    return DaemonStatus(
        project=plan.project,
        config=str(plan.path),
        pid=os.getpid(),
        uptime_s=round(time.time() - started, 3),
        socket=str(plan.daemon.socket),
        proxy=proxy,
        services=described,
        containment=containment,
    )
