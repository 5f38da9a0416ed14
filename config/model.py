"""The resolved plan: immutable, fully defaulted, checked once by `config.load`.

Everything downstream (supervisor, proxy) reads these objects and never the TOML.
Durations are float seconds, sizes are int bytes, paths are absolute. Immutable all the way
down: the dataclasses are frozen, sequences are tuples, and mappings are read-only views
(`types.MappingProxyType`) of private copies, whatever the caller passed in. A change is a
new plan (`dataclasses.replace`), never an edit of a shared one.
"""

from __future__ import annotations

import enum
import ipaddress
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V]) -> Mapping[K, V]:
    """A read-only copy of `items` (the caller's dict can change; this cannot)."""
    return MappingProxyType(dict(items))


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


class RestartPolicy(enum.Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NO = "no"


class CrashLoop(enum.Enum):
    RETRY = "retry"  # failed by a crash loop: retried after a cool-down (10s, 20s, … 5m)
    STOP = "stop"  # failed for good, until `corral start`


class Roll(enum.Enum):
    """How a rolling restart replaces an instance."""

    AUTO = "auto"  # config.load resolves it: IN_PLACE for a fixed port not behind the proxy
    SURGE = "surge"  # start the replacement on a fresh port, then drain and stop the old one
    IN_PLACE = "in-place"  # stop the old one, start the new one on the same port (N-1 up)


class IdleMode(enum.Enum):
    """What an autoscaled service does with its last instance once it is idle."""

    STOP = "stop"  # stop it: the next request is a cold start
    FREEZE = "freeze"  # freeze its processes (cgroup freezer or SIGSTOP): a warm start


class DependCondition(enum.Enum):
    STARTED = "started"  # the dependency's instances have been spawned
    HEALTHY = "healthy"  # every instance of the dependency is ready
    COMPLETED = "completed"  # a oneshot dependency exited 0


class HealthKind(enum.Enum):
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


class Balance(enum.Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONN = "least_conn"
    P2C = "p2c"
    RANDOM = "random"
    HASH = "hash"


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """One probe used for both readiness and liveness.

    Readiness: the first success puts the instance in the proxy pool; `retries` consecutive
    failures take it out (state `unhealthy`). Liveness: an instance that stays unhealthy for
    another `retries` probes is restarted (when `restart_unhealthy`).
    """

    kind: HealthKind
    path: str = "/healthz"  # http
    command: tuple[str, ...] = ()  # exec
    interval: float = 2.0
    timeout: float = 1.0
    retries: int = 3
    start_period: float = 0.0
    restart_unhealthy: bool = True


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """How the proxy picks this service for a request."""

    path: str = "/"
    host: str | None = None
    strip_prefix: bool = False


@dataclass(frozen=True, slots=True)
class HashKey:
    """What `balance = "hash"` hashes: the client IP, a header or a cookie."""

    source: str = "ip"  # "ip" | "header" | "cookie"
    name: str = ""


@dataclass(frozen=True, slots=True)
class ScaleSpec:
    """Request-driven autoscaling, with Knative's names and meaning (docs/serverless.md).

    The autoscaler keeps in-flight requests per ready instance near `target`, averaged over
    `window` (stable mode), or over `panic_window` once that average asks for
    `panic_threshold` times the ready instances (panic mode: scale out fast, never in).
    """

    min: int = 0  # Knative min-scale
    max: int = 10  # Knative max-scale (0 there means no limit; here every instance is a process)
    target: float = 100.0  # in-flight requests per instance aimed at (soft); Knative target
    concurrency: int = 0  # hard limit of requests on one instance (0: none); containerConcurrency
    window: float = 60.0  # stable window; Knative window
    panic_window: float = 6.0  # Knative: panic-window-percentage of the window
    panic_threshold: float = 2.0  # 2.0 = 200 %; Knative panic-threshold-percentage
    idle_timeout: float = 60.0  # the last instance goes this long after the last request
    cold_start_timeout: float = 30.0  # a held request waits this long for an instance: then 503
    idle: IdleMode = IdleMode.STOP
    cold_start_header: bool = False  # `Server-Timing: cold-start;dur=…` on a held request's answer


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """cgroup v2 caps on each instance's cgroup (`cgroup = { ... }`); None: not capped."""

    memory_max: int | None = None  # bytes → memory.max (the OOM killer acts above it)
    cpu_max: float | None = None  # CPUs → cpu.max (throttled above it)
    pids_max: int | None = None  # → pids.max (fork fails above it)

    def any(self) -> bool:
        return any(v is not None for v in (self.memory_max, self.cpu_max, self.pids_max))


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    command: tuple[str, ...]  # argv template; "{port}" is replaced per instance
    cwd: Path
    instances: int = 1  # with `scale`: its min (the count at start)
    scale: ScaleSpec | None = None  # request-driven autoscaling (exclusive with `instances`)
    port: int | None = None  # base port: instance i prefers port + i
    auto_port: bool = False  # port = "auto": any free port
    venv: bool = True
    requirements: Path | None = None  # None with venv=True: a venv with no extra packages
    python: str = (
        "python3"  # interpreter the venv is built from (load() defaults it to Corral's own)
    )
    env: Mapping[str, str] = field(default_factory=_empty)  # env_file merged in, interpolated
    env_files: tuple[Path, ...] = ()  # the env_file files env was read from, in order
    app: str | None = None  # "module:attr" of the ASGI/WSGI app, for `corral promote lambda`
    restart: RestartPolicy = RestartPolicy.ALWAYS
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    depends_on: Mapping[str, DependCondition] = field(default_factory=_empty)
    oneshot: bool = False
    health: HealthSpec | None = None
    # Crash-loop protection: the crash_limit-th crash inside crash_window → failed; then
    # (crash_loop = retry) retried after a cool-down doubling from cooldown_initial.
    crash_limit: int = 5
    crash_window: float = 60.0
    crash_loop: CrashLoop = CrashLoop.RETRY
    cooldown_initial: float = 10.0
    cooldown_max: float = 300.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    # Start-up: a portless instance without a health check counts as up ("running") only
    # once it has stayed up this long; any other must be ready within start_timeout, or it
    # is stopped and failed.
    min_uptime: float = 1.0
    start_timeout: float = 60.0
    # Proxy side (ignored when the service has no port or [proxy] is absent).
    route: RouteSpec | None = None
    balance: Balance = Balance.ROUND_ROBIN
    hash_key: HashKey = field(default_factory=HashKey)
    weights: tuple[int, ...] = ()  # per instance, from `weight = [3, 1, 1]`
    default_weight: int = 1  # from `weight = 2`, and for instances beyond `weights`
    drain_timeout: float = 30.0
    # Rolling operations and watch mode.
    roll: Roll = Roll.AUTO
    max_surge: int = 1
    watch: tuple[str, ...] = ()
    watch_ignore: tuple[str, ...] = ()
    # Resources and identity (config/limits.py, docs/systemd.md).
    memory_limit: int | None = None  # bytes of the process tree's RSS; restart above it ...
    memory_grace: float = 30.0  # ... once it has stayed above for this long
    rlimits: Mapping[str, tuple[int, int]] = field(default_factory=_empty)  # (soft, hard)
    cgroup: CgroupLimits = field(default_factory=CgroupLimits)
    user: str | None = None  # run as (name or uid); the daemon must be root
    group: str | None = None  # default: the user's primary group

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", frozen_map(self.env))
        object.__setattr__(self, "depends_on", frozen_map(self.depends_on))
        object.__setattr__(self, "rlimits", frozen_map(self.rlimits))

    @property
    def has_port(self) -> bool:
        return self.port is not None or self.auto_port

    @property
    def most_instances(self) -> int:
        """The most instances it may run at once (its port range): `scale.max` or `instances`."""
        return self.scale.max if self.scale is not None else self.instances

    def weight(self, index: int) -> int:
        """Weight of instance `index` (0-based)."""
        return self.weights[index] if index < len(self.weights) else self.default_weight


@dataclass(frozen=True, slots=True)
class ProxySpec:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 8080),)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    idle_timeout: float = 4.0  # kept below common backend keep-alive timeouts (5 s)
    header_timeout: float = 10.0  # a whole request head (docs/proxy.md says why 10 s)
    body_timeout: float = 60.0  # between two reads of a request body (nginx's default)
    send_timeout: float = 60.0  # between two writes a client accepts (nginx's default)
    retries: int = 2
    retry_idempotent_errors: bool = True
    max_body_size: int = 0  # 0 = unlimited
    max_header_size: int = 64 * 1024
    queue_timeout: float = 10.0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    eject_failures: int = 5
    eject_cooldown: float = 10.0
    access_log: bool = False
    workers: int = 1
    max_connections: int | None = None  # None: derived from RLIMIT_NOFILE (proxy/limits.py)


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    state_dir: Path  # venvs, state file (and logs, by default)
    socket: Path
    logs_dir: Path  # instance output (default: state_dir / "logs")
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    log_tail_lines: int = 1000
    cache_dir: Path | None = None  # uv's and pip's cache under a unit (else theirs, in $HOME)


@dataclass(frozen=True, slots=True)
class DashboardSpec:
    """The web dashboard: always on the control socket, on TCP only when `listen` is set."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    """/metrics: always on the control socket, also on TCP (for Prometheus) with `listen`."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A whole corral.toml, resolved."""

    path: Path  # the config file
    project: str
    services: Mapping[str, ServiceSpec]  # in start order (dependencies first)
    daemon: DaemonSpec
    proxy: ProxySpec | None = None
    dashboard: DashboardSpec = field(default_factory=DashboardSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", frozen_map(self.services))
