"""Prometheus text for the supervisor side of /metrics (the proxy adds its own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.prometheus import labels as _labels

if TYPE_CHECKING:
    from .daemon import Daemon


def render(daemon: Daemon) -> str:
    lines = [
        "# HELP corral_instance_up 1 if the instance is ready (or running, without a port).",
        "# TYPE corral_instance_up gauge",
    ]
    restarts = [
        "# HELP corral_instance_restarts_total Restarts of the instance.",
        "# TYPE corral_instance_restarts_total counter",
    ]
    for row in daemon.ps():
        labels = _labels(service=row["service"], instance=row["name"])
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
    for name, service in daemon.services.items():
        lines.append(f"corral_desired_instances{_labels(service=name)} {service.desired}")
    return "\n".join(lines) + "\n"
