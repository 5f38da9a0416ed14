"""The `[dashboard]` table: where the web dashboard listens on TCP (it is always on the socket)."""

from __future__ import annotations

from collections.abc import Sequence

from config.model import DashboardSpec, ProxySpec, ServiceSpec
from config.proxy import parse_address
from config.render import describe_ports, format_address
from config.table import Table, show

_ALLOWED = ("listen",)


def read_dashboard(
    top: Table, services: Sequence[ServiceSpec], proxy: ProxySpec | None
) -> DashboardSpec:
    """DashboardSpec from `[dashboard]`; without `listen` the page is on the control socket only."""
    table = top.table("dashboard", _ALLOWED)
    if table is None or not table.has("listen"):
        return DashboardSpec()
    value = table.data["listen"]
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(value)
        listen = parse_address(value)  # a bare port means 127.0.0.1: never the LAN by accident
    except ValueError:
        what = 'an address like "127.0.0.1:9100", ":9100" or 9100'
        raise table.error("listen", f"expected {what}, got {show(value)}") from None
    _check_free(table, listen, services, proxy)
    return DashboardSpec(listen=listen)


def _check_free(
    table: Table,
    listen: tuple[str, int],
    services: Sequence[ServiceSpec],
    proxy: ProxySpec | None,
) -> None:
    port = listen[1]
    if port == 0:
        return  # any free port, chosen at bind time
    for address in proxy.listen if proxy else ():
        if address[1] == port:
            raise table.error(
                "listen", f"port {port} is also proxy.listen ({format_address(address)})"
            )
    for spec in services:
        if spec.port is not None and spec.port <= port < spec.port + max(spec.most_instances, 1):
            raise table.error(
                "listen",
                f'port {port} is also used by service "{spec.name}" ({describe_ports(spec)})',
            )
