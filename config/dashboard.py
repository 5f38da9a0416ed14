"""The `[dashboard]` table: where the web dashboard listens on TCP (it is always on the socket)."""

from __future__ import annotations

import ipaddress
import re
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
    listen = read_listen(table, 9100)
    check_free(table, listen, services, proxy)
    return DashboardSpec(listen=listen)


def read_listen(table: Table, example: int) -> tuple[str, int]:
    """`table`'s `listen` address (the dashboard's, the metrics'); `example` port for errors."""
    value = table.data["listen"]
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(value)
        host, port = parse_address(value)  # a bare port means 127.0.0.1: never the LAN by accident
    except ValueError:
        what = f'an address like "127.0.0.1:{example}", ":{example}" or {example}'
        raise table.error("listen", f"expected {what}, got {show(value)}") from None
    if (problem := _bad_host(host)) is not None:
        raise table.error("listen", problem)
    return host, port


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _bad_host(host: str) -> str | None:
    """Why `host` can be neither an IP address nor a host name (a name resolves at start)."""
    if host.replace(".", "").isdigit():  # only digits and dots: meant as an IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address (each of its four numbers is 0 to 255)"
        return None
    if ":" in host:
        return None  # bracketed IPv6: parse_address checked it
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is neither an IP address nor a host name"
    return None


def check_free(
    table: Table,
    listen: tuple[str, int],
    services: Sequence[ServiceSpec],
    proxy: ProxySpec | None,
) -> None:
    """Refuse a `listen` port the proxy or a service's fixed ports already use."""
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
