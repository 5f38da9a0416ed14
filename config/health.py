"""The `health` table of a service: one http, tcp or exec probe and its timing."""

from __future__ import annotations

from config.model import HealthKind, HealthSpec
from config.table import Table, show
from config.units import format_duration

_KEYS = ("http", "tcp", "exec", "interval", "timeout", "retries", "start_period")
_ALLOWED = (*_KEYS, "restart_unhealthy")


def read_health(service: Table, has_port: bool) -> HealthSpec | None:
    """The service's probe, or None when it has no `health` table."""
    table = service.table("health", _ALLOWED)
    if table is None:
        return None
    kinds = [kind for kind in HealthKind if table.has(kind.value)]
    if len(kinds) != 1:
        got = " and ".join(kind.value for kind in kinds) or "none"
        raise service.error("health", f"expected exactly one of http, tcp or exec, got {got}")
    kind = kinds[0]
    if kind is not HealthKind.EXEC and not has_port:
        raise table.error(kind.value, f"a {kind.value} check needs the service to have a port")
    path, command = "/healthz", tuple[str, ...]()
    if kind is HealthKind.HTTP:
        path = _http_path(table)
    elif kind is HealthKind.TCP:
        if table.data["tcp"] is not True:
            raise table.expected("tcp", "true")
    else:
        command = table.argv("exec")
    interval = table.duration("interval", 2.0, positive=True)
    # The default timeout shrinks with a short interval so `interval = "500ms"` alone is valid.
    timeout = table.duration("timeout", min(1.0, interval), positive=True)
    if timeout > interval:
        raise table.error(
            "timeout",
            f"expected a duration <= interval ({format_duration(interval)}), "
            f"got {show(table.data['timeout'])}",
        )
    return HealthSpec(
        kind=kind,
        path=path,
        command=command,
        interval=interval,
        timeout=timeout,
        retries=table.integer("retries", 3, minimum=1),
        start_period=table.duration("start_period", 0.0),
        restart_unhealthy=table.flag("restart_unhealthy", True),
    )


def _http_path(table: Table) -> str:
    value = table.data["http"]
    if value is True:
        return "/healthz"
    if not isinstance(value, str) or not value.startswith("/"):
        raise table.expected("http", 'a path like "/healthz"')
    return value
