"""Host and path-prefix routing: which pool serves a request."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from config.model import RouteSpec

from .backend import LATENCY_BUCKETS
from .pool import Pool

# Per-route response counters: 1xx..5xx by index, then proxy-generated errors.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(slots=True, eq=False)
class Latency:
    """A route's latency histogram: request received to response finished (+Inf last)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.total += seconds
        self.count += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


@dataclass(slots=True, eq=False)
class Route:
    """A route with its pool, the prefix as matched, and its request counters."""

    spec: RouteSpec
    pool: Pool
    prefix: str
    counts: list[int] = field(default_factory=lambda: [0] * len(STATUS_CLASSES))
    latency: Latency = field(default_factory=Latency)
    raw_prefix: bytes = b""

    def __post_init__(self) -> None:
        self.raw_prefix = self.prefix.encode()

    def matches(self, path: bytes) -> bool:
        prefix = self.raw_prefix
        if not path.startswith(prefix):
            return False
        # "/api" matches "/api", "/api/" and "/api/x", not "/apix".
        n = len(prefix)
        return len(path) == n or prefix.endswith(b"/") or path[n : n + 1] == b"/"

    def rewrite(self, target: bytes) -> bytes:
        """The request target sent upstream: the prefix removed when `strip_prefix` is set."""
        if not self.spec.strip_prefix or self.prefix == "/":
            return target
        rest = target[len(self.raw_prefix) :]
        if not rest.startswith(b"/"):
            rest = b"/" + rest
        return rest


def _normalise_host(host: bytes | None) -> bytes | None:
    """Lower-case host without port: b"API.local:8080" → b"api.local", b"[::1]:80" → b"[::1]"."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    head, sep, port = host.rpartition(b":")
    return head if sep and port.isdigit() else host


class Router:
    """Maps (host, path) to a route; the table is swapped atomically by `set_routes`."""

    def __init__(self) -> None:
        self._by_host: dict[bytes, list[Route]] = {}
        self._any: list[Route] = []
        self._routes: list[Route] = []
        self._only: Route | None = None  # the single host-less "/" route, the common case

    def set_routes(self, routes: list[tuple[RouteSpec, Pool]]) -> None:
        """Replace the table; requests already routed keep their pool."""
        old = {(r.spec, r.pool.name): (r.counts, r.latency) for r in self._routes}
        table: list[Route] = []
        for spec, pool in routes:
            prefix = spec.path if spec.path.startswith("/") else "/" + spec.path
            if len(prefix) > 1:
                prefix = prefix.rstrip("/") or "/"
            counts, latency = old.get((spec, pool.name)) or ([0] * len(STATUS_CLASSES), Latency())
            table.append(Route(spec, pool, prefix, counts, latency))
        by_host: dict[bytes, list[Route]] = {}
        any_host: list[Route] = []
        for route in table:
            host = _normalise_host(route.spec.host.encode("idna") if route.spec.host else None)
            (by_host.setdefault(host, []) if host else any_host).append(route)
        for lst in [*by_host.values(), any_host]:
            lst.sort(key=lambda r: len(r.prefix), reverse=True)
        only = any_host[0] if not by_host and len(any_host) == 1 else None
        if only is not None and only.prefix != "/":
            only = None
        # Plain assignments, no await in between: a request sees the old table or the new one.
        self._by_host, self._any, self._routes, self._only = by_host, any_host, table, only

    def lookup(self, host: bytes | None, path: bytes) -> Route | None:
        """The route for a request: host-specific routes first, then host-less; longest prefix.

        `path` is the raw request path (no query), matched without percent-decoding.
        """
        if self._only is not None:
            return self._only
        if self._by_host:
            routes = self._by_host.get(_normalise_host(host) or b"")
            if routes:
                for route in routes:
                    if route.matches(path):
                        return route
        for route in self._any:
            if route.matches(path):
                return route
        return None

    def match(self, host: str | None, path: str) -> tuple[RouteSpec, Pool] | None:
        """(route spec, pool) for a request, or None when nothing matches."""
        route = self.lookup(host.encode("idna") if host else None, path.encode())
        return (route.spec, route.pool) if route else None

    def routes(self) -> list[Route]:
        """The current table."""
        return list(self._routes)

    def pools(self) -> list[Pool]:
        """Distinct pools in the current table."""
        seen: dict[int, Pool] = {}
        for r in self._routes:
            seen.setdefault(id(r.pool), r.pool)
        return list(seen.values())
