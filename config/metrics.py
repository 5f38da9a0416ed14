"""The `[metrics]` table: /metrics on TCP for Prometheus (it is always on the control socket)."""

from __future__ import annotations

from collections.abc import Sequence

from config.dashboard import check_free
from config.model import DashboardSpec, MetricsSpec, ProxySpec, ServiceSpec
from config.proxy import parse_address
from config.render import format_address
from config.table import Table, show

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
    value = table.data["listen"]
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(value)
        listen = parse_address(value)  # a bare port means 127.0.0.1: never the LAN by accident
    except ValueError:
        what = 'an address like "127.0.0.1:9464", ":9464" or 9464'
        raise table.error("listen", f"expected {what}, got {show(value)}") from None
    check_free(table, listen, services, proxy)
    if dashboard.listen is not None and listen[1] != 0 and dashboard.listen[1] == listen[1]:
        raise table.error(
            "listen",
            f"port {listen[1]} is also dashboard.listen ({format_address(dashboard.listen)})",
        )
    return MetricsSpec(listen=listen)
