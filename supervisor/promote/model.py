"""What each service needs to run anywhere: the target-neutral model every target renders.

Built from the Plan alone (never the running daemon): the image recipe, the command with its
port filled in, replicas, the probe, dependencies, environment split into inline values and
env files, stop and restart settings, and the entry proxy's routes. Paths are kept relative
(to the project root or to the output directory) so the output does not depend on where the
project lives.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from config.environment import read_env_file
from config.model import (
    Balance,
    DependCondition,
    HashKey,
    HealthKind,
    Plan,
    ProxySpec,
    RestartPolicy,
    RouteSpec,
    ServiceSpec,
)

from .errors import PromoteError
from .verdict import fixed_count

DEFAULT_PORT = 8000  # a service with port = "auto" listens here inside its container
ENTRY = "corral-proxy"  # the entry proxy's service name in compose, swarm and k8s
_IMAGE_NAME = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Build:
    """How a service's image is built; paths are POSIX, relative to the project root."""

    code: str  # the service's cwd ("." for the root)
    requirements: str | None  # requirements file, or pyproject.toml
    uv_lock: str | None  # uv.lock beside a pyproject.toml requirements file
    venv: bool
    excluded: tuple[str, ...]  # never in the build context (state dir, env files, output)


@dataclass(frozen=True, slots=True)
class Probe:
    """The health check as a container probe (or a TCP one, where Corral waits for the port)."""

    kind: HealthKind
    path: str
    command: tuple[str, ...]
    interval: float
    timeout: float
    retries: int
    start_period: float
    liveness: bool  # unhealthy instances are restarted
    # Corral's start_timeout: until then a failing check means "still starting", never
    # "unhealthy" (Docker's start_period is the same idea; Kubernetes' readiness never fails).
    start_timeout: float = 0.0

    @property
    def docker_start_period(self) -> float:
        """Docker's start_period: probe failures in it do not count, as in Corral's start."""
        return max(self.start_period, self.start_timeout)


@dataclass(frozen=True, slots=True)
class Workload:
    """One service as a container workload."""

    spec: ServiceSpec
    image: str
    build: Build
    command: tuple[str, ...]  # {port} filled in with `port`
    port: int | None  # the port inside the container (every replica has its own)
    probe: Probe | None
    depends_on: dict[str, DependCondition]  # only services promoted with it
    env: dict[str, str]  # values not coming from env files (or overriding them)
    env_files: tuple[str, ...]  # relative to the project root
    file_env: dict[str, str]  # what the env files resolve to (for a ConfigMap); env wins

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def replicas(self) -> int:
        """The count on a target that runs a fixed one (Knative and Lambda read `scale`)."""
        return fixed_count(self.spec)

    @property
    def oneshot(self) -> bool:
        return self.spec.oneshot

    @property
    def restart(self) -> RestartPolicy:
        return self.spec.restart

    @property
    def stop_signal(self) -> signal.Signals:
        return self.spec.stop_signal

    @property
    def binds_loopback(self) -> bool:
        """The command names a loopback address: other containers could not reach it."""
        return any("127.0.0.1" in arg or arg == "localhost" for arg in self.command)


@dataclass(frozen=True, slots=True)
class EntryRoute:
    """One routed service as the entry proxy sees it."""

    service: str
    port: int
    route: RouteSpec
    balance: Balance
    hash_key: HashKey
    drain_timeout: float


@dataclass(frozen=True, slots=True)
class Entry:
    """Corral's proxy as the stack's entry point, in a container of its own."""

    image: str
    proxy: ProxySpec
    routes: tuple[EntryRoute, ...]

    @property
    def ports(self) -> tuple[int, ...]:
        """Container ports, one per distinct listen port."""
        return tuple(sorted({port for _, port in self.proxy.listen}))


@dataclass(frozen=True, slots=True)
class Stack:
    """Everything a target renders: the selected services and the entry proxy."""

    plan: Plan
    project: str  # a name usable for images, stacks and k8s objects
    root: Path  # the project root (the config file's directory)
    out: Path
    workloads: dict[str, Workload]  # in start order
    entry: Entry | None
    base_image: str

    def from_out(self, path: str) -> str:
        """`path` (relative to the project root) relative to the output directory."""
        return _posix(os.path.relpath(self.root / path, self.out))

    def in_out(self, path: str) -> str:
        """`path` (relative to the output directory) relative to the project root."""
        return _posix(os.path.relpath(self.out / path, self.root))


def build_stack(
    plan: Plan, out: Path, names: list[str], *, base_image: str, registry: str = ""
) -> Stack:
    """The model of `names` (every service when empty) from `plan`, for output in `out`."""
    unknown = [name for name in names if name not in plan.services]
    if unknown:
        raise PromoteError(
            f"unknown service {unknown[0]!r} (the config has {', '.join(plan.services)})"
        )
    chosen = [spec for name, spec in plan.services.items() if not names or name in names]
    root = plan.path.parent
    out = out.resolve()
    project = image_name(plan.project) or "corral"
    workloads = {
        spec.name: _workload(spec, plan, root, out, project, registry, {s.name for s in chosen})
        for spec in chosen
    }
    return Stack(
        plan=plan,
        project=project,
        root=root,
        out=out,
        workloads=workloads,
        entry=_entry(plan, workloads, project, registry),
        base_image=base_image,
    )


def image_name(text: str) -> str:
    """`text` as a Docker image / DNS-label friendly name: lower case, [a-z0-9._-]."""
    return _IMAGE_NAME.sub("-", text.lower()).strip("-._")


def container_port(spec: ServiceSpec) -> int | None:
    """The port a replica listens on inside its container."""
    if spec.port is not None:
        return spec.port
    return DEFAULT_PORT if spec.auto_port else None


def _image(project: str, name: str, registry: str) -> str:
    base = f"{project}-{image_name(name)}:latest"
    return f"{registry.rstrip('/')}/{base}" if registry else base


def _workload(
    spec: ServiceSpec,
    plan: Plan,
    root: Path,
    out: Path,
    project: str,
    registry: str,
    chosen: set[str],
) -> Workload:
    port = container_port(spec)
    command = tuple(arg.replace("{port}", str(port)) for arg in spec.command)
    env_files = tuple(_inside(root, path, spec, "env_file") for path in spec.env_files)
    file_env: dict[str, str] = {}
    for path in spec.env_files:
        file_env.update(read_env_file(path, os.environ))
    # Whatever the env files do not already say (the env table wins over them) goes inline.
    env = {key: value for key, value in spec.env.items() if file_env.get(key) != value}
    return Workload(
        spec=spec,
        image=_image(project, spec.name, registry),
        build=_build(spec, plan, root, out, env_files),
        command=command,
        port=port,
        probe=_probe(spec, port),
        depends_on={n: c for n, c in spec.depends_on.items() if n in chosen},
        env=env,
        env_files=env_files,
        file_env=file_env,
    )


def _build(
    spec: ServiceSpec, plan: Plan, root: Path, out: Path, env_files: tuple[str, ...]
) -> Build:
    code = _inside(root, spec.cwd, spec, "cwd")
    requirements = uv_lock = None
    if spec.venv and spec.requirements is not None:
        requirements = _inside(root, spec.requirements, spec, "requirements")
        lock = spec.requirements.with_name("uv.lock")
        if spec.requirements.name == "pyproject.toml" and lock.is_file():
            uv_lock = _inside(root, lock, spec, "requirements")
    excluded = [".git", "**/__pycache__", "**/*.pyc", "**/.venv", *env_files]
    for path in (plan.daemon.state_dir, out):
        if path.resolve().is_relative_to(root) and path.resolve() != root:
            excluded.append(_posix(os.path.relpath(path.resolve(), root)))
    return Build(
        code=code,
        requirements=requirements,
        uv_lock=uv_lock,
        venv=spec.venv,
        excluded=tuple(dict.fromkeys(excluded)),
    )


def _probe(spec: ServiceSpec, port: int | None) -> Probe | None:
    health = spec.health
    if health is None:
        if port is None:
            return None
        # Corral's readiness without a check: the port accepts a connection.
        return Probe(
            HealthKind.TCP,
            "",
            (),
            2.0,
            1.0,
            3,
            0.0,
            liveness=False,
            start_timeout=spec.start_timeout,
        )
    command = tuple(arg.replace("{port}", str(port)) for arg in health.command)
    return Probe(
        kind=health.kind,
        path=health.path,
        command=command,
        interval=health.interval,
        timeout=health.timeout,
        retries=health.retries,
        start_period=health.start_period,
        liveness=health.restart_unhealthy,
        start_timeout=spec.start_timeout,
    )


def _entry(plan: Plan, workloads: dict[str, Workload], project: str, registry: str) -> Entry | None:
    if plan.proxy is None:
        return None
    routes = tuple(
        EntryRoute(
            service=w.name,
            port=w.port,
            route=w.spec.route,
            balance=w.spec.balance,
            hash_key=w.spec.hash_key,
            drain_timeout=w.spec.drain_timeout,
        )
        for w in workloads.values()
        if w.spec.route is not None and w.port is not None
    )
    if not routes:
        return None
    return Entry(image=_image(project, ENTRY, registry), proxy=plan.proxy, routes=routes)


def _inside(root: Path, path: Path, spec: ServiceSpec, key: str) -> str:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise PromoteError(
            f"services.{spec.name}.{key}: {resolved} is outside the project directory {root}; "
            "an image can only be built from files under it"
        )
    return _posix(os.path.relpath(resolved, root))


def _posix(path: str) -> str:
    return PurePosixPath(Path(path)).as_posix()
