"""Prometheus text rendering of the proxy's counters (the daemon serves it at /metrics)."""

from __future__ import annotations

import math
import time

from . import prometheus as prom
from .backend import LATENCY_BUCKETS
from .context import Context
from .router import STATUS_CLASSES, Router

# Every label value these counters can have, sampled at 0 from the start: a series that appears
# only at its first event makes `rate()` and `increase()` miss that event (Prometheus' advice).
ERROR_STATUSES = (400, 404, 405, 408, 413, 414, 431, 500, 501, 502, 503, 504)
TIMEOUT_KINDS = ("header", "body", "send")


def render(ctx: Context, router: Router) -> str:
    """All proxy metrics in the Prometheus text exposition format."""
    backends = [(pool.name, b) for pool in router.pools() for b in pool.backends()]
    out: list[str] = []

    def per_backend(name: str, kind: str, help_text: str, attr: str) -> None:
        out.extend(
            prom.family(
                name,
                kind,
                help_text,
                (
                    f"{name}{prom.labels(pool=p, backend=b.key, addr=b.addr)} {int(getattr(b, attr))}"
                    for p, b in backends
                ),
            )
        )

    per_backend("corral_proxy_backend_requests_total", "counter", "Completed requests.", "requests")
    per_backend(
        "corral_proxy_backend_errors_total",
        "counter",
        "Connection-level failures (refused, reset, timed out, bad response).",
        "failures",
    )
    per_backend(
        "corral_proxy_backend_in_flight", "gauge", "Requests and tunnels under way.", "in_flight"
    )
    per_backend("corral_proxy_backend_ready", "gauge", "1 when the backend is ready.", "ready")
    per_backend("corral_proxy_backend_draining", "gauge", "1 while the backend drains.", "draining")
    now = time.monotonic()
    out.extend(
        prom.family(
            "corral_proxy_backend_ejected",
            "gauge",
            "1 while the backend is ejected (eject.failures in a row, for eject.cooldown).",
            (
                f"corral_proxy_backend_ejected{prom.labels(pool=p, backend=b.key, addr=b.addr)}"
                f" {int(b.ejected_until > now)}"
                for p, b in backends
            ),
        )
    )
    hist = "corral_proxy_backend_latency_seconds"
    samples: list[str] = []
    for p, b in backends:
        cumulative = 0
        for bound, count in zip([*LATENCY_BUCKETS, math.inf], b.latency_buckets, strict=True):
            cumulative += count
            labels = prom.labels(pool=p, backend=b.key, addr=b.addr, le=prom.le(bound))
            samples.append(f"{hist}_bucket{labels} {cumulative}")
        labels = prom.labels(pool=p, backend=b.key, addr=b.addr)
        samples.append(f"{hist}_sum{labels} {b.latency_sum:.6f}")
        samples.append(f"{hist}_count{labels} {b.latency_count}")
    out.extend(prom.family(hist, "histogram", "Time from dispatch to end of response.", samples))
    route_samples = []
    for route in router.routes():
        for cls, count in zip(STATUS_CLASSES, route.counts, strict=True):
            labels = prom.labels(
                pool=route.pool.name, host=route.spec.host or "", path=route.prefix, code=cls
            )
            route_samples.append(f"corral_proxy_route_responses_total{labels} {count}")
    out.extend(
        prom.family(
            "corral_proxy_route_responses_total",
            "counter",
            "Responses per route by status class.",
            route_samples,
        )
    )
    out.extend(_per_route_latency(router))
    pools = router.pools()
    for name, attr, help_text in (
        ("corral_proxy_retries_total", "retries", "Requests sent again to another backend."),
        ("corral_proxy_ejections_total", "ejections", "Backends ejected after failures in a row."),
    ):
        out.extend(
            prom.family(
                name,
                "counter",
                help_text,
                (f"{name}{prom.labels(pool=pool.name)} {getattr(pool, attr)}" for pool in pools),
            )
        )
    out.extend(
        prom.family(
            "corral_proxy_in_flight",
            "gauge",
            "Requests and tunnels under way on every backend.",
            [f"corral_proxy_in_flight {sum(b.in_flight for _, b in backends)}"],
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_errors_total",
            "counter",
            "Responses written by the proxy itself, by status.",
            (
                f"corral_proxy_errors_total{prom.labels(status=str(s))} {n}"
                for s, n in sorted({**dict.fromkeys(ERROR_STATUSES, 0), **ctx.errors}.items())
            ),
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_client_timeouts_total",
            "counter",
            "Client connections ended by the header, body or send timeout.",
            (
                f"corral_proxy_client_timeouts_total{prom.labels(kind=k)} {n}"
                for k, n in sorted(
                    {**dict.fromkeys(TIMEOUT_KINDS, 0), **ctx.client_timeouts}.items()
                )
            ),
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_client_connections",
            "gauge",
            "Open client connections.",
            [f"corral_proxy_client_connections {len(ctx.clients)}"],
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_max_connections",
            "gauge",
            "Client connections the proxy holds before it stops accepting.",
            [f"corral_proxy_max_connections {ctx.max_connections}"],
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_accept_pauses_total",
            "counter",
            "Times the proxy stopped accepting because it held max_connections.",
            [f"corral_proxy_accept_pauses_total {ctx.accept_pauses}"],
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_backend_connections",
            "gauge",
            "Open connections to backends (in use and idle).",
            [f"corral_proxy_backend_connections {ctx.upstream_open}"],
        )
    )
    out.extend(
        prom.family(
            "corral_proxy_client_connections_total",
            "counter",
            "Client connections accepted.",
            [f"corral_proxy_client_connections_total {ctx.connections_total}"],
        )
    )
    return "\n".join(out) + "\n"


def _per_route_latency(router: Router) -> list[str]:
    name = "corral_proxy_route_latency_seconds"
    samples: list[str] = []
    for route in router.routes():
        where = {"pool": route.pool.name, "host": route.spec.host or "", "path": route.prefix}
        cumulative = 0
        for bound, count in zip([*LATENCY_BUCKETS, math.inf], route.latency.buckets, strict=True):
            cumulative += count
            samples.append(f"{name}_bucket{prom.labels(**where, le=prom.le(bound))} {cumulative}")
        samples.append(f"{name}_sum{prom.labels(**where)} {route.latency.total:.6f}")
        samples.append(f"{name}_count{prom.labels(**where)} {route.latency.count}")
    return prom.family(name, "histogram", "Time from request received to response end.", samples)
