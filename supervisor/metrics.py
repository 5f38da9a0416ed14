"""Prometheus text for the supervisor side of /metrics (the proxy adds its own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.prometheus import labels as _labels

if TYPE_CHECKING:
    from .view import DaemonView


def render(daemon: DaemonView) -> str:
    lines = [
        "# HELP corral_instance_up 1 if the instance is ready (or running, without a port).",
        "# TYPE corral_instance_up gauge",
    ]
    restarts = [
        "# HELP corral_instance_restarts_total Restarts of the instance.",
        "# TYPE corral_instance_restarts_total counter",
    ]
    for row in daemon.ps():
        if row["retiring"] or row["incoming"]:
            continue  # a roll's second incarnation of the same instance: one series each
        labels = _labels(service=row["service"], instance=row["name"], state=row["state"])
        lines.append(f"corral_instance_up{labels} {int(bool(row['ready']))}")
        restarts.append(
            f"corral_instance_restarts_total{_labels(service=row['service'], instance=row['name'])}"
            f" {row['restarts']}"
        )
    lines += restarts
    lines += [
        "# HELP corral_desired_instances Instances the service should run.",
        "# TYPE corral_desired_instances gauge",
    ]
    for name, desired in daemon.desired_counts().items():
        lines.append(f"corral_desired_instances{_labels(service=name)} {desired}")
    return "\n".join(lines) + "\n"
