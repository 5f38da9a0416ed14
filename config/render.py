"""A resolved Plan as text for `corral check`, and as JSON for `corral check --json`."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import shlex
import signal
from collections.abc import Mapping
from pathlib import Path

from config.model import (
    CrashLoop,
    HealthKind,
    HealthSpec,
    IdleMode,
    Plan,
    Roll,
    ScaleSpec,
    ServiceSpec,
)
from config.units import format_duration, format_size

_PLAIN = re.compile(r"[\w@%+=:,./{}-]+")


def render(plan: Plan) -> str:
    """The plan as `corral check` prints it: a header, then one block per service in start order."""
    root = plan.path.parent
    lines = [
        f"project {plan.project} ({plan.path})",
        f"  state_dir   {_relative(plan.daemon.state_dir, root)}",
        f"  socket      {_relative(plan.daemon.socket, root)}",
        f"  logs        {format_size(plan.daemon.log_max_bytes)} x {plan.daemon.log_keep} files"
        + _logs_dir(plan, root),
        "  proxy       "
        + (", ".join(format_address(a) for a in plan.proxy.listen) if plan.proxy else "off"),
    ]
    if plan.dashboard.listen is not None:
        lines.append(f"  dashboard   {format_address(plan.dashboard.listen)} (and the socket)")
    if plan.metrics.listen is not None:
        lines.append(f"  metrics     {format_address(plan.metrics.listen)} (and the socket)")
    for spec in plan.services.values():
        lines += ["", *_service_lines(spec, root, proxied=plan.proxy is not None)]
    return "\n".join(lines) + "\n"


def describe_ports(spec: ServiceSpec) -> str:
    """ "ports 8001-8003", "port 8001", "port auto" or "no port"."""
    if spec.auto_port:
        return "port auto"
    if spec.port is None:
        return "no port"
    last = spec.port + max(spec.most_instances, 1) - 1
    return f"ports {spec.port}-{last}" if last > spec.port else f"port {spec.port}"


def format_address(address: tuple[str, int]) -> str:
    """("::1", 80) -> "[::1]:80"."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _service_lines(spec: ServiceSpec, root: Path, proxied: bool) -> list[str]:
    fields = {
        "command": _command(spec.command),
        "instances": f"{spec.instances}, {describe_ports(spec)}",
        "cwd": _relative(spec.cwd, root),
        "venv": _venv(spec, root),
        "env": ", ".join(spec.env) or "-",  # names only: values are often secrets
        "health": _health(spec.health),
        "depends_on": ", ".join(f"{n} ({c.value})" for n, c in spec.depends_on.items()) or "-",
        "restart": f"{spec.restart.value}, stop {spec.stop_signal.name} "
        f"then SIGKILL after {format_duration(spec.stop_timeout)}",
        "route": _route(spec, proxied),
    }
    if spec.oneshot:
        fields["instances"] += ", oneshot"
    if spec.scale is not None:
        fields["instances"] = f"{_scale(spec.scale)}, {describe_ports(spec)}"
    if spec.port is not None:
        fields["roll"] = _roll(spec)
    start = _start(spec)
    if start:
        fields["start"] = start
    crash_loop = _crash_loop(spec)
    if crash_loop:
        fields["crash_loop"] = crash_loop
    if spec.watch:
        fields["watch"] = ", ".join(spec.watch)
    fields.update(_limits(spec))
    return [spec.name] + [f"  {key:<11} {value}" for key, value in fields.items()]


def _scale(scale: ScaleSpec) -> str:
    """ "autoscaled 0-8, target 10 in flight (at most 1), …": the autoscaler's settings."""
    limit = f" (at most {scale.concurrency})" if scale.concurrency else ""
    idle = "frozen" if scale.idle is IdleMode.FREEZE else "stopped"
    text = (
        f"autoscaled {scale.min}-{scale.max}, target {scale.target:g} in flight{limit}, "
        f"window {format_duration(scale.window)} (panic {format_duration(scale.panic_window)} "
        f"at {scale.panic_threshold * 100:g}%)"
    )
    if scale.min == 0:
        text += (
            f", {idle} after {format_duration(scale.idle_timeout)} idle, "
            f"cold start within {format_duration(scale.cold_start_timeout)}"
        )
    return text


def _limits(spec: ServiceSpec) -> dict[str, str]:
    """The resource and identity lines of a service, for the keys it sets."""
    fields = {}
    if spec.user is not None:
        fields["run as"] = spec.user + (f":{spec.group}" if spec.group else "")
    if spec.memory_limit is not None:
        fields["memory"] = (
            f"restart above {format_size(spec.memory_limit)} RSS "
            f"for {format_duration(spec.memory_grace) or '0s'}"
        )
    caps = spec.cgroup
    parts = []
    if caps.memory_max is not None:
        parts.append(f"memory.max {format_size(caps.memory_max)}")
    if caps.cpu_max is not None:
        parts.append(f"cpu.max {caps.cpu_max:g} CPUs")
    if caps.pids_max is not None:
        parts.append(f"pids.max {caps.pids_max}")
    if parts:
        fields["cgroup"] = ", ".join(parts)
    if spec.rlimits:
        fields["rlimits"] = ", ".join(
            f"{name}={_rlimit(soft)}" + ("" if soft == hard else f":{_rlimit(hard)}")
            for name, (soft, hard) in spec.rlimits.items()
        )
    return fields


def _rlimit(value: int) -> str:
    return "unlimited" if value < 0 else str(value)


def _logs_dir(plan: Plan, root: Path) -> str:
    if plan.daemon.logs_dir == plan.daemon.state_dir / "logs":
        return ""
    return f" in {_relative(plan.daemon.logs_dir, root)}"


def _roll(spec: ServiceSpec) -> str:
    """What a rolling restart does with a fixed port."""
    if spec.roll is Roll.IN_PLACE:
        return f"in place, one at a time ({describe_ports(spec)} kept)"
    return "surge onto fresh ports"


def _start(spec: ServiceSpec) -> str:
    """The start-up rule, when it is not the default one."""
    if spec.health is None and not spec.has_port:
        return (
            "" if spec.min_uptime == 1.0 else f"running after {format_duration(spec.min_uptime)} up"
        )
    return (
        "" if spec.start_timeout == 60.0 else f"ready within {format_duration(spec.start_timeout)}"
    )


def _crash_loop(spec: ServiceSpec) -> str:
    """What follows a crash loop, when it is not the default (retry after 10s doubling to 5m)."""
    loop = f"{spec.crash_limit} crashes in {format_duration(spec.crash_window)}"
    if spec.crash_loop is CrashLoop.STOP:
        return f"failed for good after {loop}"
    if (spec.cooldown_initial, spec.cooldown_max) == (10.0, 300.0):
        return ""
    first, last = format_duration(spec.cooldown_initial), format_duration(spec.cooldown_max)
    return f"retried {first} after {loop}, doubling to {last}"


def _command(argv: tuple[str, ...]) -> str:
    # shlex.join would print '{port}'; the placeholder reads better bare.
    return " ".join(arg if _PLAIN.fullmatch(arg) else shlex.quote(arg) for arg in argv)


def _venv(spec: ServiceSpec, root: Path) -> str:
    if not spec.venv:
        return "none"
    requirements = _relative(spec.requirements, root) if spec.requirements else "no requirements"
    return f"{spec.python}, {requirements}"


def _health(health: HealthSpec | None) -> str:
    if health is None:
        return "-"
    what = {
        HealthKind.HTTP: f"http {health.path}",
        HealthKind.TCP: "tcp",
        HealthKind.EXEC: f"exec {_command(health.command)}",
    }[health.kind]
    return (
        f"{what} every {format_duration(health.interval)} "
        f"(timeout {format_duration(health.timeout)}, {health.retries} retries)"
    )


def _route(spec: ServiceSpec, proxied: bool) -> str:
    if spec.route is None or not proxied:
        return "not proxied"
    where = f"{spec.route.host or '*'}{spec.route.path}"
    strip = ", strip prefix" if spec.route.strip_prefix else ""
    hashed = f" on {spec.hash_key.source}" if spec.balance.value == "hash" else ""
    if spec.hash_key.name:
        hashed += f" {spec.hash_key.name}"
    weights = f", weights {list(spec.weights)}" if spec.weights else ""
    if spec.default_weight != 1:
        weights += f", weight {spec.default_weight}"
    return f"{where} -> {spec.balance.value}{hashed}{weights}{strip}"


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def plan_to_json(plan: Plan) -> dict[str, object]:
    """The plan as JSON-serialisable data, mirroring the model's field names."""
    data = _jsonable(plan)
    assert isinstance(data, dict)
    return data


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, signal.Signals):  # an IntEnum: its name reads better than 15
        return value.name
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value
