"""corral.toml on disk into a checked, ordered Plan."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from config.checks import check_autoscaled, check_services
from config.daemon import read_daemon
from config.dashboard import read_dashboard
from config.errors import ConfigError
from config.graph import find_cycle, toposort
from config.interpolate import interpolate
from config.metrics import read_metrics
from config.model import Plan, ProxySpec, Roll, RouteSpec, ServiceSpec
from config.proxy import read_proxy
from config.service import NAME, read_service
from config.table import Table, show

# The project names a systemd unit, its directories and a line of `corral status`: no control
# characters, quotes, `%` or `/` (docker compose is stricter still: [a-z0-9_-]).
MAX_PROJECT = 64
PROJECT_PUNCTUATION = "._-+!"
PROJECT_NAME = re.compile(rf"[^\W_][\w {re.escape(PROJECT_PUNCTUATION)}]{{0,{MAX_PROJECT - 1}}}")

CONFIG_NAME = "corral.toml"
MAX_DEPTH = 32


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
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends in "(at line X, column Y)".
        raise ConfigError(file, "", str(exc)) from None
    except ValueError as exc:  # an integer past Python's 4,300-digit conversion limit
        raise ConfigError(file, "", f"invalid value: {exc}") from None
    except RecursionError:
        raise ConfigError(file, "", f"nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(data, file)
    return data


def _check_depth(data: dict[str, object], file: Path) -> None:
    # Iterative: the checks after this (interpolation, error messages) recurse, and no valid
    # corral.toml nests more than a few levels (services.api.health.http).
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(file, key[:200], f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(v, f"{key}.{k}" if key else k, depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]


def _build(data: object, file: Path, environ: Mapping[str, str]) -> Plan:
    config_path = file.resolve()
    root = config_path.parent
    top = Table(data, "", file, ("project", "daemon", "proxy", "dashboard", "metrics", "services"))
    project = top.text("project", root.name or "corral")
    if top.has("project") and not PROJECT_NAME.fullmatch(project):
        raise top.expected(
            "project",
            f"a name of letters, digits, spaces and {PROJECT_PUNCTUATION} (starting with a "
            f"letter or digit, at most {MAX_PROJECT} characters)",
        )
    if not project:
        raise top.expected("project", "a non-empty name")
    daemon = read_daemon(top, config_path, environ, project)
    proxy = read_proxy(top)
    services = _read_services(top, file, root, environ)
    check_services(services, proxy, file)
    dashboard = read_dashboard(top, services, proxy)
    metrics = read_metrics(top, services, proxy, dashboard)
    services = _default_route(services, proxy)
    check_autoscaled(services, proxy, file)
    services = _resolve_rolls(services, proxy)
    return Plan(
        path=config_path,
        project=project,
        services=_ordered(services, file),
        daemon=daemon,
        proxy=proxy,
        dashboard=dashboard,
        metrics=metrics,
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
                f"or digit, at most 63 characters), got {show(name)}",
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


def _resolve_rolls(services: list[ServiceSpec], proxy: ProxySpec | None) -> list[ServiceSpec]:
    """roll = "auto": a fixed port not behind Corral's proxy keeps its port (in place, N-1 up
    meanwhile); through the proxy, or on "auto" ports, a replacement surges onto a fresh one."""
    out = []
    for spec in services:
        if spec.roll is Roll.AUTO:
            routed = proxy is not None and spec.route is not None
            fixed = spec.port is not None and not routed
            spec = dataclasses.replace(spec, roll=Roll.IN_PLACE if fixed else Roll.SURGE)
        out.append(spec)
    return out


def _ordered(services: list[ServiceSpec], file: Path) -> dict[str, ServiceSpec]:
    deps = {spec.name: list(spec.depends_on) for spec in services}
    cycle = find_cycle(deps)
    if cycle is not None:
        raise ConfigError(
            file, f"services.{cycle[0]}.depends_on", "dependency cycle: " + " -> ".join(cycle)
        )
    by_name = {spec.name: spec for spec in services}
    return {name: by_name[name] for name in toposort(deps)}
