"""corral.toml on disk into a checked, ordered Plan."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from config.checks import check_services
from config.daemon import read_daemon
from config.dashboard import read_dashboard
from config.errors import ConfigError
from config.graph import find_cycle, toposort
from config.interpolate import interpolate
from config.model import Plan, ProxySpec, RouteSpec, ServiceSpec
from config.proxy import read_proxy
from config.service import NAME, read_service
from config.table import Table, show

CONFIG_NAME = "corral.toml"


def find_config(start: Path) -> Path:
    """The corral.toml in `start` or its nearest parent directory, as docker compose looks."""
    start = start.absolute()
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(None, "", f"no {CONFIG_NAME} in {start} (use -f FILE)")


def load(path: Path | str, environ: Mapping[str, str] | None = None) -> Plan:
    """Read, interpolate and check a corral.toml; `environ` (default os.environ) fills ${VAR}."""
    file = Path(path)
    environ = os.environ if environ is None else environ
    data = interpolate(_read_toml(file), environ, file)
    return _build(data, file, environ)


def _read_toml(file: Path) -> dict[str, object]:
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends in "(at line X, column Y)".
        raise ConfigError(file, "", str(exc)) from None


def _build(data: object, file: Path, environ: Mapping[str, str]) -> Plan:
    config_path = file.resolve()
    root = config_path.parent
    top = Table(data, "", file, ("project", "daemon", "proxy", "dashboard", "services"))
    project = top.text("project", root.name or "corral")
    if not project:
        raise top.expected("project", "a non-empty name")
    daemon = read_daemon(top, config_path)
    proxy = read_proxy(top)
    services = _read_services(top, file, root, environ)
    check_services(services, proxy, file)
    dashboard = read_dashboard(top, services, proxy)
    services = _default_route(services, proxy)
    return Plan(
        path=config_path,
        project=project,
        services=_ordered(services, file),
        daemon=daemon,
        proxy=proxy,
        dashboard=dashboard,
    )


def _read_services(
    top: Table, file: Path, root: Path, environ: Mapping[str, str]
) -> list[ServiceSpec]:
    raw = top.data.get("services", {})
    if not isinstance(raw, dict):
        raise top.expected("services", "a table of [services.NAME] tables")
    if not raw:
        raise top.error("services", "expected at least one [services.NAME] table, got none")
    for name in raw:
        if not NAME.fullmatch(name):
            raise top.error(
                "services",
                f"expected service names of a-z, 0-9, '_' and '-' (starting with a letter "
                f"or digit), got {show(name)}",
            )
    return [read_service(name, value, file, root, environ) for name, value in raw.items()]


def _default_route(services: list[ServiceSpec], proxy: ProxySpec | None) -> list[ServiceSpec]:
    # One web service behind a proxy should just work without writing a route.
    if proxy is None or any(spec.route for spec in services):
        return services
    ported = [spec for spec in services if spec.has_port]
    if len(ported) != 1:
        return services
    only = ported[0]
    routed = dataclasses.replace(only, route=RouteSpec(path="/"))
    return [routed if spec is only else spec for spec in services]


def _ordered(services: list[ServiceSpec], file: Path) -> dict[str, ServiceSpec]:
    deps = {spec.name: list(spec.depends_on) for spec in services}
    cycle = find_cycle(deps)
    if cycle is not None:
        raise ConfigError(
            file, f"services.{cycle[0]}.depends_on", "dependency cycle: " + " -> ".join(cycle)
        )
    by_name = {spec.name: spec for spec in services}
    return {name: by_name[name] for name in toposort(deps)}
