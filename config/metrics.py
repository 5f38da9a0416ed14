"""The `[metrics]` table: /metrics on TCP for Prometheus (it is always on the control socket)."""

from __future__ import annotations

from collections.abc import Sequence

from config.dashboard import check_free, read_listen
from config.model import DashboardSpec, MetricsSpec, ProxySpec, ServiceSpec
from config.render import format_address
from config.table import Table

_ALLOWED = ("listen",)


def read_metrics(
    top: Table,
    services: Sequence[ServiceSpec],
    proxy: ProxySpec | None,
    dashboard: DashboardSpec,
) -> MetricsSpec:
    """MetricsSpec from `[metrics]`; without `listen`, /metrics is on the control socket only."""
    table = top.table("metrics", _ALLOWED)
    if table is None or not table.has("listen"):
        return MetricsSpec()
    listen = read_listen(table, 9464)
    check_free(table, listen, services, proxy)
    if dashboard.listen is not None and listen[1] != 0 and dashboard.listen[1] == listen[1]:
        raise table.error(
            "listen",
            f"port {listen[1]} is also dashboard.listen ({format_address(dashboard.listen)})",
        )
    return MetricsSpec(listen=listen)
