"""The entry proxy's file (`corral proxy --config`): `[proxy]` plus one `[routes.NAME]` per pool.

This is how a stack promoted to containers keeps the routes and balancing of its corral.toml:
`corral promote` writes the file, and Corral's proxy in the entry container reads it. A route
table takes the proxy-side keys of a service (`route`, `balance`, `hash_on`, `drain_timeout`)
and says where the backends are: fixed addresses, or DNS names re-resolved on an interval.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from config.errors import ConfigError
from config.model import Balance, HashKey, ProxySpec, RouteSpec
from config.proxy import parse_address, read_proxy
from config.routing import read_hash_key, read_route
from config.service import NAME
from config.table import Table, show

_ROUTE_KEYS = (
    *("route", "balance", "hash_on", "drain_timeout"),
    *("backends", "backend_dns", "resolve_interval"),
)


@dataclass(frozen=True, slots=True)
class EntryRoute:
    """One pool of the entry proxy: where requests go and how its members are found."""

    name: str
    route: RouteSpec = field(default_factory=RouteSpec)
    balance: Balance = Balance.ROUND_ROBIN
    hash_key: HashKey = field(default_factory=HashKey)
    backends: tuple[tuple[str, int], ...] = ()  # fixed addresses
    backend_dns: tuple[tuple[str, int], ...] = ()  # names whose addresses are the members
    resolve_interval: float = 2.0
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """A whole entry file, resolved."""

    proxy: ProxySpec
    routes: tuple[EntryRoute, ...]


def load_entry(path: Path | str) -> EntrySpec:
    """Read and check an entry file; errors name the file and the key, as for corral.toml."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", str(exc)) from None
    top = Table(data, "", file, ("proxy", "routes"))
    proxy = read_proxy(top) or ProxySpec()
    raw = top.data.get("routes", {})
    if not isinstance(raw, dict) or not raw:
        raise top.error("routes", "expected at least one [routes.NAME] table")
    routes = tuple(_read_route(name, value, file) for name, value in raw.items())
    seen: dict[tuple[str | None, str], str] = {}
    for entry in routes:
        where = (entry.route.host, entry.route.path)
        if where in seen:
            raise ConfigError(
                file, f"routes.{entry.name}.route", f'is also the route of "{seen[where]}"'
            )
        seen[where] = entry.name
    return EntrySpec(proxy=proxy, routes=routes)


def _read_route(name: str, data: object, file: Path) -> EntryRoute:
    if not NAME.fullmatch(name):
        raise ConfigError(
            file, "routes", f"expected route names like service names, got {show(name)}"
        )
    table = Table(data, f"routes.{name}", file, _ROUTE_KEYS)
    balance = table.choice("balance", Balance, Balance.ROUND_ROBIN)
    backends = _addresses(table, "backends")
    backend_dns = _addresses(table, "backend_dns")
    if not backends and not backend_dns:
        raise table.error("backends", "expected backends or backend_dns (at least one address)")
    return EntryRoute(
        name=name,
        route=read_route(table, has_port=True) or RouteSpec(),
        balance=balance,
        hash_key=read_hash_key(table, balance),
        backends=backends,
        backend_dns=backend_dns,
        resolve_interval=table.duration("resolve_interval", 2.0, positive=True),
        drain_timeout=table.duration("drain_timeout", 30.0),
    )


def _addresses(table: Table, name: str) -> tuple[tuple[str, int], ...]:
    found: list[tuple[str, int]] = []
    for item in table.strings(name):
        try:
            host, port = parse_address(item)
        except ValueError:
            raise table.error(
                name, f'expected addresses like "api:8000", got {show(item)}'
            ) from None
        if port == 0 or item.startswith(":"):
            raise table.error(name, f'expected addresses like "api:8000", got {show(item)}')
        found.append((host, port))
    return tuple(found)
