"""The `[proxy]` table: listen addresses, timeouts and limits."""

from __future__ import annotations

import ipaddress

from config.model import ProxySpec
from config.table import Table, show

_ALLOWED = (
    *("listen", "timeouts", "retries", "retry_on_error", "max_body_size", "max_header_size"),
    *("queue_timeout", "trusted_proxies", "eject", "access_log", "workers", "max_connections"),
)

_TIMEOUTS = ("connect", "read", "idle", "header", "body", "send")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def read_proxy(top: Table) -> ProxySpec | None:
    """ProxySpec from the `[proxy]` table; None when it is absent (no proxy runs)."""
    table = top.table("proxy", _ALLOWED)
    if table is None:
        return None
    timeouts = table.table("timeouts", _TIMEOUTS) or _empty(table, "timeouts")
    eject = table.table("eject", ("failures", "cooldown")) or _empty(table, "eject")
    header_size = table.size("max_header_size", 64 * 1024)
    if header_size <= 0:
        raise table.expected("max_header_size", 'a size > 0 like "64KB"')
    return ProxySpec(
        listen=_read_listen(table),
        connect_timeout=timeouts.duration("connect", 5.0, positive=True),
        read_timeout=timeouts.duration("read", 60.0, positive=True),
        idle_timeout=timeouts.duration("idle", 4.0, positive=True),
        header_timeout=timeouts.duration("header", 10.0, positive=True),
        body_timeout=timeouts.duration("body", 60.0, positive=True),
        send_timeout=timeouts.duration("send", 60.0, positive=True),
        retries=table.integer("retries", 2),
        retry_idempotent_errors=table.flag("retry_on_error", True),
        max_body_size=table.size("max_body_size", 0),
        max_header_size=header_size,
        queue_timeout=table.duration("queue_timeout", 10.0),
        trusted_proxies=_read_networks(table),
        eject_failures=eject.integer("failures", 5, minimum=1),
        eject_cooldown=eject.duration("cooldown", 10.0),
        access_log=table.flag("access_log", False),
        workers=table.integer("workers", 1, minimum=1),
        max_connections=(
            table.integer("max_connections", 1, minimum=1) if table.has("max_connections") else None
        ),
    )


def _empty(table: Table, name: str) -> Table:
    return Table({}, table.key(name), table.file, ())


def parse_address(value: str | int) -> tuple[str, int]:
    """(host, port) from 8080, "8080", ":8080", "0.0.0.0:8080" or "[::1]:8080"."""
    if isinstance(value, int):
        host, port_text = "", str(value)
    elif value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError(value)
        ipaddress.IPv6Address(host)  # brackets are only for IPv6 literals
    else:
        host, _, port_text = value.rpartition(":")
        if ":" in host:
            raise ValueError(value)  # an unbracketed IPv6 address is ambiguous
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(value)
    return host or "127.0.0.1", int(port_text)


def _read_listen(table: Table) -> tuple[tuple[str, int], ...]:
    value = table.data.get("listen", "127.0.0.1:8080")
    items = value if isinstance(value, list) else [value]
    addresses: list[tuple[str, int]] = []
    for item in items:
        try:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise ValueError(item)
            address = parse_address(item)
        except ValueError:
            what = 'an address like "127.0.0.1:8080", ":8080" or "[::1]:8080"'
            raise table.error("listen", f"expected {what}, got {show(item)}") from None
        if address in addresses:
            raise table.error("listen", f"{show(item)} is listed twice")
        addresses.append(address)
    if not addresses:
        raise table.expected("listen", "at least one address")
    return tuple(addresses)


def _read_networks(table: Table) -> tuple[Network, ...]:
    networks: list[Network] = []
    for item in table.strings("trusted_proxies"):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise table.error(
                "trusted_proxies",
                f'expected an IP address or network like "10.0.0.0/8", got {show(item)}',
            ) from None
    return tuple(networks)
