"""Proxy-side settings of a service: route, balancing strategy, hash key and weights."""

from __future__ import annotations

from config.model import Balance, HashKey, RouteSpec
from config.table import Table


def read_route(service: Table, has_port: bool) -> RouteSpec | None:
    """The service's `route` table, or None when it has none."""
    table = service.table("route", ("path", "host", "strip_prefix"))
    if table is None:
        return None
    if not has_port:
        raise service.error("route", "a routed service needs a port")
    path = table.text("path", "/")
    if not path.startswith("/"):
        raise table.expected("path", 'a path starting with "/"')
    host = table.optional_text("host")
    if host is not None:
        host = host.strip().lower()
        if not host or "/" in host or any(char.isspace() for char in host):
            raise table.expected("host", 'a host name like "api.localhost"')
    # "/api/" and "/api" are one prefix; keeping one spelling makes duplicate routes comparable.
    path = path.rstrip("/") or "/"
    return RouteSpec(path=path, host=host, strip_prefix=table.flag("strip_prefix", False))


def read_hash_key(service: Table, balance: Balance) -> HashKey:
    """What `hash_on` names; only allowed with `balance = "hash"`."""
    if not service.has("hash_on"):
        return HashKey()
    if balance is not Balance.HASH:
        raise service.error("hash_on", 'only applies with balance = "hash"')
    value = service.text("hash_on", "ip")
    source, _, name = value.partition(":")
    if (source == "ip" and not name) or (source in ("header", "cookie") and name):
        return HashKey(source=source, name=name)
    raise service.expected("hash_on", '"ip", "header:NAME" or "cookie:NAME"')


def read_weights(service: Table, instances: int) -> tuple[tuple[int, ...], int]:
    """(per-instance weights, default weight) from `weight = 2` or `weight = [3, 1, 1]`.

    A single number is the default for every instance, including those added by `scale`.
    Weights start at 1: an instance that should get no traffic is one to stop or scale away.
    """
    value = service.data.get("weight", [])
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (), value
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 1 for item in value
    ):
        raise service.expected("weight", "an integer >= 1 or an array of them")
    if len(value) > instances:
        raise service.error(
            "weight", f"expected at most {instances} weights (one per instance), got {len(value)}"
        )
    return tuple(value), 1
