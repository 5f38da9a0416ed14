"""/metrics: the supervisor's Prometheus text (the proxy adds its own), and its TCP listener.

/metrics is always on the control socket; `[metrics] listen` serves it on TCP as well, for a
Prometheus server to scrape. Only GET /metrics is served there: it reveals what runs, never
lets anyone change it, so it needs no token (as node_exporter's).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from config.render import format_address
from proxy import prometheus as prom
from proxy.prometheus import labels as _labels

from .states import State
from .tcpsite import MAX_BODY, TcpSite

if TYPE_CHECKING:
    from .status import InstanceRow
    from .view import DaemonView

log = logging.getLogger(__name__)

_STATES = tuple(s.value for s in State)


def render(daemon: DaemonView) -> str:
    lines = [
        "# HELP corral_instance_up 1 if the instance is ready (or running, without a port).",
        "# TYPE corral_instance_up gauge",
    ]
    restarts = [
        "# HELP corral_instance_restarts_total Restarts of the instance.",
        "# TYPE corral_instance_restarts_total counter",
    ]
    rows = [row for row in daemon.ps() if not (row["retiring"] or row["incoming"])]
    # (a roll's second incarnation of the same instance is left out: one series each)
    for row in rows:
        labels = _labels(service=row["service"], instance=row["name"], state=row["state"])
        lines.append(f"corral_instance_up{labels} {int(bool(row['ready']))}")
        restarts.append(
            f"corral_instance_restarts_total{_labels(service=row['service'], instance=row['name'])}"
            f" {row['restarts']}"
        )
    lines += restarts
    lines += [
        "# HELP corral_desired_instances Instances the service should run.",
        "# TYPE corral_desired_instances gauge",
    ]
    for name, desired in daemon.desired_counts().items():
        lines.append(f"corral_desired_instances{_labels(service=name)} {desired}")
    lines += _instances(rows)
    lines += prom.family(
        "corral_venv_build_seconds",
        "gauge",
        "How long the service's last virtualenv build took (built by this daemon).",
        (
            f"corral_venv_build_seconds{_labels(service=name)} {s['venv_build_s']}"
            for name, s in daemon.status()["services"].items()
            if s.get("venv_build_s") is not None
        ),
    )
    return "\n".join(lines) + "\n"


def _instances(rows: list[InstanceRow]) -> list[str]:
    """One series per (instance, state) like kube-state-metrics; restarts by reason; RSS, CPU."""
    out: list[str] = []
    out += prom.family(
        "corral_instance_state",
        "gauge",
        "1 for the state the instance is in, 0 for the others.",
        (
            f"corral_instance_state{_labels(service=r['service'], instance=r['name'], state=s)}"
            f" {int(r['state'] == s)}"
            for r in rows
            for s in _STATES
        ),
    )
    out += prom.family(
        "corral_instance_restarts_by_reason_total",
        "counter",
        "Restarts of the instance by reason (exit, liveness, memory_limit, start_timeout, spawn).",
        (
            f"corral_instance_restarts_by_reason_total"
            f"{_labels(service=r['service'], instance=r['name'], reason=reason)} {n}"
            for r in rows
            for reason, n in sorted(r["restart_reasons"].items())
        ),
    )
    live = [r for r in rows if r["pid"] and r["rss_bytes"]]  # sampled at least once
    out += prom.family(
        "corral_instance_resident_memory_bytes",
        "gauge",
        "RSS of the instance's process tree (the sampler's last round).",
        (
            f"corral_instance_resident_memory_bytes"
            f"{_labels(service=r['service'], instance=r['name'])} {r['rss_bytes']}"
            for r in live
        ),
    )
    out += prom.family(
        "corral_instance_cpu_percent",
        "gauge",
        "CPU of the instance's process tree over the sampler's last interval (100 = one core).",
        (
            f"corral_instance_cpu_percent{_labels(service=r['service'], instance=r['name'])}"
            f" {r['cpu_percent']}"
            for r in live
        ),
    )
    return out


def render_all(daemon: DaemonView) -> str:
    """Everything /metrics serves: the supervisor's families, the autoscaler's, the proxy's."""
    return render(daemon) + daemon.autoscaler_metrics() + daemon.proxy_metrics()


async def handle(request: web.Request, daemon: DaemonView) -> web.Response:
    return web.Response(text=render_all(daemon), content_type="text/plain", charset="utf-8")


class MetricsListener:
    """`[metrics] listen`: GET /metrics on TCP, nothing else."""

    def __init__(self, daemon: DaemonView) -> None:
        self._daemon = daemon
        self.site: TcpSite | None = None
        self.address: tuple[str, int] | None = None

    async def open(self) -> None:
        plan = self._daemon.plan
        if plan.metrics.listen is None:
            return
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/metrics", self._metrics)
        site = TcpSite(app, "metrics")
        self.address = await site.open(plan.metrics.listen, f"[metrics] listen in {plan.path}")
        self.site = site
        log.info("metrics on http://%s/metrics", format_address(self.address))

    async def close(self) -> None:
        if self.site is not None:
            await self.site.close()
            self.site = None
            self.address = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return await handle(request, self._daemon)
