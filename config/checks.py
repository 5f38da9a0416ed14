"""Checks that span services: dependencies, port ranges, routes."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from config.errors import ConfigError
from config.model import DependCondition, ProxySpec, ServiceSpec
from config.render import describe_ports


def check_services(
    services: Sequence[ServiceSpec], proxy: ProxySpec | None, file: Path | None
) -> None:
    """Raise ConfigError for the first conflict between services (in file order)."""
    _check_dependencies(services, file)
    _check_ports(services, proxy, file)
    _check_routes(services, file)


def _check_dependencies(services: Sequence[ServiceSpec], file: Path | None) -> None:
    by_name = {spec.name: spec for spec in services}
    for spec in services:
        key = f"services.{spec.name}.depends_on"
        for name, condition in spec.depends_on.items():
            if name == spec.name:
                raise ConfigError(file, key, f'service "{name}" cannot depend on itself')
            dependency = by_name.get(name)
            if dependency is None:
                close = difflib.get_close_matches(name, list(by_name), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise ConfigError(file, key, f'unknown service "{name}"{hint}')
            if condition is DependCondition.COMPLETED and not dependency.oneshot:
                raise ConfigError(
                    file,
                    f"{key}.{name}",
                    f'"completed" needs service "{name}" to be oneshot = true',
                )
            if condition is DependCondition.HEALTHY and not (
                dependency.health or dependency.has_port
            ):
                # Readiness is a passing check or an open port; with neither it never comes.
                raise ConfigError(
                    file,
                    f"{key}.{name}",
                    f'"healthy" needs service "{name}" to have a health check or a port',
                )


def _check_ports(
    services: Sequence[ServiceSpec], proxy: ProxySpec | None, file: Path | None
) -> None:
    # The base port stays reserved at instances = 0 so scaling up to 1 cannot collide.
    spans = [
        (spec, range(spec.port, spec.port + max(spec.most_instances, 1)))
        for spec in services
        if spec.port is not None
    ]
    for i, (spec, span) in enumerate(spans):
        for other, other_span in spans[:i]:
            shared = max(span.start, other_span.start)
            if shared in span and shared in other_span:
                raise ConfigError(
                    file,
                    f"services.{spec.name}.port",
                    f'port {shared} is also used by service "{other.name}" '
                    f"({describe_ports(other)})",
                )
    for _host, port in proxy.listen if proxy else ():
        for spec, span in spans:
            if port in span:
                raise ConfigError(
                    file,
                    "proxy.listen",
                    f'port {port} is also used by service "{spec.name}" ({describe_ports(spec)})',
                )


def check_autoscaled(
    services: Sequence[ServiceSpec], proxy: ProxySpec | None, file: Path | None
) -> None:
    """An autoscaled service must be behind Corral's proxy: the proxy counts its requests and
    holds them while it is at zero (run once routes are defaulted)."""
    for spec in services:
        if spec.scale is None or (proxy is not None and spec.route is not None):
            continue
        missing = "a [proxy] table" if proxy is None else 'a route (route = { path = "/" })'
        raise ConfigError(
            file,
            f"services.{spec.name}.scale",
            f"an autoscaled service must be behind Corral's proxy, which counts its requests "
            f"and holds them while it is at zero: add {missing}",
        )


def _check_routes(services: Sequence[ServiceSpec], file: Path | None) -> None:
    seen: dict[tuple[str | None, str], str] = {}
    for spec in services:
        if spec.route is None:
            continue
        where = (spec.route.host, spec.route.path)
        if where in seen:
            host = f'host "{spec.route.host}" ' if spec.route.host else ""
            raise ConfigError(
                file,
                f"services.{spec.name}.route",
                f'{host}path "{spec.route.path}" is also routed to service "{seen[where]}"',
            )
        seen[where] = spec.name
