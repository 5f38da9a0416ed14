"""One `[services.NAME]` table, checked on its own, into a ServiceSpec."""

from __future__ import annotations

import re
import signal
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from config.environment import env_file_paths, read_environment
from config.health import read_health
from config.limits import read_cgroup, read_identity, read_memory_limit, read_rlimits
from config.model import Balance, CrashLoop, DependCondition, RestartPolicy, Roll, ServiceSpec
from config.routing import read_hash_key, read_route, read_weights
from config.scale import read_scale
from config.table import Table
from config.units import format_duration

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # a DNS label: file names, promote targets
# One machine, one daemon: past this it is a typo (and `scale` is bounded the same way).
MAX_INSTANCES = 1000

_ALLOWED = (
    *("command", "instances", "port", "cwd", "requirements", "venv", "python", "env", "env_file"),
    *("restart", "stop_signal", "stop_timeout", "depends_on", "oneshot", "health"),
    *("crash_limit", "crash_window", "backoff", "route", "balance", "hash_on", "weight"),
    *("drain_timeout", "max_surge", "watch", "watch_ignore", "app"),
    *("min_uptime", "start_timeout", "crash_loop", "crash_cooldown", "roll", "scale"),
    *("memory_limit", "memory_grace", "rlimits", "cgroup", "user", "group"),
)
# "module:attr" as uvicorn, gunicorn and Mangum users write it: dotted names on both sides.
_APP = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def read_service(
    name: str, data: object, file: Path | None, root: Path, environ: Mapping[str, str]
) -> ServiceSpec:
    """The ServiceSpec for `[services.<name>]`; `root` is the config file's directory."""
    table = Table(data, f"services.{name}", file, _ALLOWED)
    if not table.has("command"):
        raise table.error("command", "missing (expected a command string or an array of strings)")
    command = table.argv("command")
    instances = table.integer("instances", 1, maximum=MAX_INSTANCES)
    scale = read_scale(table, MAX_INSTANCES)
    if scale is not None:
        instances = scale.min  # where it starts; the autoscaler moves it up to scale.max
    most = scale.max if scale is not None else instances
    port, auto_port = _read_port(table, most)
    has_port = port is not None or auto_port
    if scale is not None and not has_port:
        raise table.error("scale", "needs the service to have a port (its requests are counted)")
    if not has_port and any("{port}" in arg for arg in command):
        raise table.error("command", "uses {port} but the service has no port")
    cwd = _read_cwd(table, root)
    venv = table.flag("venv", True)
    oneshot = table.flag("oneshot", False)
    if oneshot and scale is not None:
        raise table.error("scale", "a oneshot task runs once: it cannot be autoscaled")
    balance = table.choice("balance", Balance, Balance.ROUND_ROBIN)
    backoff_initial, backoff_max = _read_backoff(table)
    cooldown_initial, cooldown_max = _read_cooldown(table)
    weights, default_weight = read_weights(table, most)
    memory_limit, memory_grace = read_memory_limit(table)
    user, group = read_identity(table)
    return ServiceSpec(
        name=name,
        command=command,
        cwd=cwd,
        instances=instances,
        scale=scale,
        port=port,
        auto_port=auto_port,
        venv=venv,
        requirements=_read_requirements(table, cwd, venv),
        python=_read_python(table, venv),
        env=read_environment(table, cwd, environ),
        env_files=env_file_paths(table, cwd),
        app=_read_app(table),
        restart=_read_restart(table, oneshot),
        stop_signal=_read_signal(table),
        stop_timeout=table.duration("stop_timeout", 10.0),
        depends_on=_read_depends_on(table),
        oneshot=oneshot,
        health=read_health(table, has_port),
        crash_limit=table.integer("crash_limit", 5, minimum=1),
        crash_window=table.duration("crash_window", 60.0, positive=True),
        crash_loop=table.choice("crash_loop", CrashLoop, CrashLoop.RETRY),
        cooldown_initial=cooldown_initial,
        cooldown_max=cooldown_max,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        min_uptime=table.duration("min_uptime", 1.0),
        start_timeout=table.duration("start_timeout", 60.0, positive=True),
        route=read_route(table, has_port),
        balance=balance,
        hash_key=read_hash_key(table, balance),
        weights=weights,
        default_weight=default_weight,
        drain_timeout=table.duration("drain_timeout", 30.0),
        roll=table.choice("roll", Roll, Roll.AUTO),
        max_surge=table.integer("max_surge", 1, minimum=1),
        watch=table.strings("watch"),
        watch_ignore=table.strings("watch_ignore"),
        memory_limit=memory_limit,
        memory_grace=memory_grace,
        rlimits=read_rlimits(table),
        cgroup=read_cgroup(table),
        user=user,
        group=group,
    )


def _read_port(table: Table, instances: int) -> tuple[int | None, bool]:
    if not table.has("port"):
        return None, False
    if table.data["port"] == "auto":
        return None, True
    port = table.data["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise table.expected("port", 'a port from 1 to 65535 or "auto"')
    last = port + max(instances, 1) - 1
    if last > 65535:
        raise table.error("port", f"{instances} instances from port {port} would need up to {last}")
    return port, False


def _read_app(table: Table) -> str | None:
    app = table.optional_text("app")
    if app is not None and not _APP.fullmatch(app):
        raise table.expected("app", 'an import path "module:attribute" like "app:app"')
    return app


def _read_cwd(table: Table, root: Path) -> Path:
    cwd = table.filepath("cwd", ".", root, resolve=True)
    st = table.stat("cwd", cwd)
    if st is None:
        raise table.error("cwd", f"directory {cwd} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise table.error("cwd", f"{cwd} is not a directory")
    return cwd


def _read_requirements(table: Table, cwd: Path, venv: bool) -> Path | None:
    if not table.has("requirements"):
        default = cwd / "requirements.txt"
        return default if venv and default.is_file() else None
    if not venv:
        raise table.error("requirements", "is set but venv = false (no venv to install into)")
    path = table.filepath("requirements", "", cwd, resolve=True)
    st = table.stat("requirements", path)
    if st is None or not stat.S_ISREG(st.st_mode):
        raise table.error("requirements", f"file {path} does not exist")
    return path


def _read_python(table: Table, venv: bool) -> str:
    if table.has("python") and not venv:
        raise table.error("python", "is set but venv = false (python only builds the venv)")
    python = table.text("python", sys.executable)
    if not python:
        raise table.expected("python", 'an interpreter like "python3.11"')
    return python


def _read_restart(table: Table, oneshot: bool) -> RestartPolicy:
    # A oneshot task that exits 0 is done; "always" would run it forever.
    default = RestartPolicy.NO if oneshot else RestartPolicy.ALWAYS
    restart = table.choice("restart", RestartPolicy, default)
    if oneshot and restart is RestartPolicy.ALWAYS:
        raise table.expected("restart", '"no" or "on-failure" for a oneshot service')
    return restart


def _read_signal(table: Table) -> signal.Signals:
    value = table.data.get("stop_signal", "SIGTERM")
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value)
        if isinstance(value, str):
            name = value.strip().upper()
            return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        pass
    raise table.expected("stop_signal", 'a signal like "SIGTERM", "TERM" or 15')


def _read_depends_on(table: Table) -> dict[str, DependCondition]:
    value = table.data.get("depends_on", [])
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return dict.fromkeys(value, DependCondition.STARTED)
    if not isinstance(value, dict):
        raise table.expected(
            "depends_on", 'an array of service names or a table like {db = "healthy"}'
        )
    conditions = Table(value, table.key("depends_on"), table.file, value.keys())
    return {
        name: conditions.choice(name, DependCondition, DependCondition.STARTED) for name in value
    }


def _read_backoff(table: Table) -> tuple[float, float]:
    return _read_growth(table, "backoff", 0.1, 30.0)


def _read_cooldown(table: Table) -> tuple[float, float]:
    return _read_growth(table, "crash_cooldown", 10.0, 300.0)


def _read_growth(table: Table, key: str, initial: float, maximum: float) -> tuple[float, float]:
    """A `{ initial, max }` table of a delay that doubles from `initial` up to `max`."""
    sub = table.table(key, ("initial", "max"))
    if sub is None:
        return initial, maximum
    first = sub.duration("initial", initial, positive=True)
    cap = sub.duration("max", max(maximum, first), positive=True)
    if cap < first:
        raise sub.expected("max", f"a duration >= initial ({format_duration(first)})")
    return first, cap
