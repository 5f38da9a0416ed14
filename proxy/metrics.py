"""Prometheus text rendering of the proxy's counters (the daemon serves it at /metrics)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .context import Context
from .pool import LATENCY_BUCKETS
from .router import STATUS_CLASSES, Router


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def render(ctx: Context, router: Router) -> str:
    """All proxy metrics in the Prometheus text exposition format."""
    backends = [(pool.name, b) for pool in router.pools() for b in pool.backends()]
    out: list[str] = []

    def per_backend(name: str, kind: str, help_text: str, attr: str) -> None:
        out.extend(
            _family(
                name,
                kind,
                help_text,
                (
                    f"{name}{_labels(pool=p, backend=b.key, addr=b.addr)} {int(getattr(b, attr))}"
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
    hist = "corral_proxy_backend_latency_seconds"
    samples: list[str] = []
    for p, b in backends:
        cumulative = 0
        for bound, count in zip([*LATENCY_BUCKETS, math.inf], b.latency_buckets, strict=True):
            cumulative += count
            labels = _labels(pool=p, backend=b.key, addr=b.addr, le=_le(bound))
            samples.append(f"{hist}_bucket{labels} {cumulative}")
        labels = _labels(pool=p, backend=b.key, addr=b.addr)
        samples.append(f"{hist}_sum{labels} {b.latency_sum:.6f}")
        samples.append(f"{hist}_count{labels} {b.latency_count}")
    out.extend(_family(hist, "histogram", "Time from dispatch to end of response.", samples))
    route_samples = []
    for route in router.routes():
        for cls, count in zip(STATUS_CLASSES, route.counts, strict=True):
            labels = _labels(
                pool=route.pool.name, host=route.spec.host or "", path=route.prefix, code=cls
            )
            route_samples.append(f"corral_proxy_route_responses_total{labels} {count}")
    out.extend(
        _family(
            "corral_proxy_route_responses_total",
            "counter",
            "Responses per route by status class.",
            route_samples,
        )
    )
    out.extend(
        _family(
            "corral_proxy_errors_total",
            "counter",
            "Responses written by the proxy itself, by status.",
            (
                f"corral_proxy_errors_total{_labels(status=str(s))} {n}"
                for s, n in sorted(ctx.errors.items())
            ),
        )
    )
    out.extend(
        _family(
            "corral_proxy_client_connections",
            "gauge",
            "Open client connections.",
            [f"corral_proxy_client_connections {len(ctx.clients)}"],
        )
    )
    out.extend(
        _family(
            "corral_proxy_client_connections_total",
            "counter",
            "Client connections accepted.",
            [f"corral_proxy_client_connections_total {ctx.connections_total}"],
        )
    )
    return "\n".join(out) + "\n"
