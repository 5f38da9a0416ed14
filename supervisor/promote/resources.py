"""Limits and identity on every target: memory_limit, cgroup caps, rlimits, user / group.

Where a target has the same thing it is mapped: the cgroup caps are what Docker's and the
kubelet's limits write (memory.max, cpu.max, pids.max), rlimits are Docker's `ulimits`, a
user is Docker's `user:` (names resolved in the image) or a pod's `runAsUser` (numbers only).
Corral's `memory_limit` — a graceful restart once the RSS has stayed above it for
`memory_grace` — has no equivalent anywhere: it becomes the container's hard memory limit
(the kernel's OOM killer, at once, no grace) when no `cgroup.memory_max` is set, and is
dropped when one is.
"""

from __future__ import annotations

from typing import Any

from config.model import ServiceSpec

from .model import Workload
from .verdict import Findings, Verdict

_MI = 1 << 20
_HARD = (
    "the container's hard memory limit: the kernel OOM-kills it at once above it "
    "(no grace, no graceful stop), and the restart policy starts it again"
)
_BOTH = "cgroup.memory_max is the container's memory limit; no target restarts on a soft threshold"
_NO_MEMORY = "no memory_limit: nothing to wait for"


def memory_cap(spec: ServiceSpec) -> int | None:
    """The hard memory limit a container gets: memory_max, else memory_limit."""
    return spec.cgroup.memory_max if spec.cgroup.memory_max is not None else spec.memory_limit


def docker_memory(size: int) -> str:
    """A size as Docker's units read it (binary: "512m" is 512 MiB)."""
    for unit, factor in (("g", 1 << 30), ("m", _MI), ("k", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"


def k8s_memory(size: int) -> str:
    """A size as a Kubernetes quantity ("512Mi", or bytes)."""
    for unit, factor in (("Gi", 1 << 30), ("Mi", _MI), ("Ki", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def ulimits(spec: ServiceSpec) -> dict[str, Any]:
    """compose / swarm `ulimits` (-1 is unlimited there too)."""
    return {
        name: soft if soft == hard else {"soft": soft, "hard": hard}
        for name, (soft, hard) in spec.rlimits.items()
    }


def docker_user(spec: ServiceSpec) -> str | None:
    if spec.user is None:
        return None
    return spec.user + (f":{spec.group}" if spec.group else "")


def compose_keys(spec: ServiceSpec) -> dict[str, Any]:
    """The compose service keys for limits and identity."""
    keys: dict[str, Any] = {}
    if (user := docker_user(spec)) is not None:
        keys["user"] = user
    if (memory := memory_cap(spec)) is not None:
        keys["mem_limit"] = docker_memory(memory)
    if spec.cgroup.cpu_max is not None:
        keys["cpus"] = spec.cgroup.cpu_max
    if spec.cgroup.pids_max is not None:
        keys["pids_limit"] = spec.cgroup.pids_max
    if spec.rlimits:
        keys["ulimits"] = ulimits(spec)
    return keys


def swarm_limits(spec: ServiceSpec) -> dict[str, Any]:
    """`deploy.resources.limits` of a Swarm service ({} when nothing is capped)."""
    limits: dict[str, Any] = {}
    if spec.cgroup.cpu_max is not None:
        limits["cpus"] = f"{spec.cgroup.cpu_max:g}"
    if (memory := memory_cap(spec)) is not None:
        limits["memory"] = docker_memory(memory)
    return limits


def k8s_resources(spec: ServiceSpec) -> dict[str, Any] | None:
    """A container's `resources` (limits only: requests default to them)."""
    limits: dict[str, Any] = {}
    if spec.cgroup.cpu_max is not None:
        limits["cpu"] = f"{round(spec.cgroup.cpu_max * 1000)}m"
    if (memory := memory_cap(spec)) is not None:
        limits["memory"] = k8s_memory(memory)
    return {"limits": limits} if limits else None


def k8s_ids(spec: ServiceSpec) -> dict[str, int]:
    """runAsUser / runAsGroup for numeric ids (Kubernetes does not resolve names)."""
    ids: dict[str, int] = {}
    if spec.user is not None and spec.user.isdigit():
        ids["runAsUser"] = int(spec.user)
        if spec.group is not None and spec.group.isdigit():
            ids["runAsGroup"] = int(spec.group)
    return ids


def judge_docker(w: Workload, found: Findings, *, swarm: bool) -> None:
    """Verdicts for compose (`swarm`: the stack file's deploy.resources)."""
    spec = w.spec
    where = "deploy.resources.limits" if swarm else "compose"
    memory_key = f"{where}.memory" if swarm else "mem_limit"
    _judge_memory(found, spec, memory_key)
    cpus = f"{where}.cpus" if swarm else "cpus"
    found.unless_default(spec, "cgroup.cpu_max", Verdict.MAPPED, f"{cpus} (cpu.max)", "none")
    if swarm:
        found.unless_default(
            spec,
            "cgroup.pids_max",
            Verdict.DROPPED,
            "the stack file format (3.8) has no pids limit: `docker service update "
            "--limit-pids N` after the deploy",
            "none",
        )
    else:
        found.unless_default(
            spec, "cgroup.pids_max", Verdict.MAPPED, "pids_limit (pids.max)", "none"
        )
    found.unless_default(spec, "rlimits", Verdict.MAPPED, "ulimits", "none")
    image_user = "the image's own user app (uid 10001)"
    found.unless_default(
        spec,
        "user",
        Verdict.MAPPED,
        "user: resolved in the image's /etc/passwd (/app is writable by the image's user only)",
        image_user,
    )
    found.unless_default(spec, "group", Verdict.MAPPED, "user: USER:GROUP", image_user)


def judge_k8s(w: Workload, found: Findings, *, where: str) -> None:
    """Verdicts for a Kubernetes (or Knative) container; `where` names its securityContext."""
    spec, name = w.spec, w.name
    _judge_memory(found, spec, "resources.limits.memory")
    found.unless_default(
        spec, "cgroup.cpu_max", Verdict.MAPPED, "resources.limits.cpu (cpu.max)", "none"
    )
    found.unless_default(
        spec,
        "cgroup.pids_max",
        Verdict.DROPPED,
        "Kubernetes limits pids per node (the kubelet's podPidsLimit), not per container",
        "none",
    )
    found.unless_default(
        spec,
        "rlimits",
        Verdict.DROPPED,
        "Kubernetes has no per-container rlimits: the container runtime's defaults apply "
        "(raise them in the image's entrypoint with `ulimit`)",
        "none",
    )
    image_user = "the image's own user app (uid 10001)"
    if spec.user is None:
        found.mapped(name, "user", image_user)
    elif spec.user.isdigit():
        found.mapped(name, "user", f"{where}.runAsUser")
    else:
        found.approximated(
            name,
            "user",
            f"Kubernetes takes numeric ids only: {spec.user!r} is not set, the pod runs as "
            f"{image_user} (write the uid to choose)",
        )
    if spec.group is None:
        found.mapped(name, "group", image_user)
    elif spec.group.isdigit() and spec.user is not None and spec.user.isdigit():
        found.mapped(name, "group", f"{where}.runAsGroup")
    else:
        found.approximated(
            name, "group", "Kubernetes takes numeric ids only (with a numeric user): not set"
        )


def judge_lambda(w: Workload, found: Findings, memory_size: int) -> None:
    spec = w.spec
    memory = f"Lambda gives a function MemorySize {memory_size} MB and ends it above that"
    found.unless_default(spec, "memory_limit", Verdict.DROPPED, memory, "none")
    found.unless_default(spec, "memory_grace", Verdict.DROPPED, memory, _NO_MEMORY)
    found.unless_default(spec, "cgroup.memory_max", Verdict.DROPPED, memory, "none")
    sandbox = "Lambda runs every function in its own sandbox, with its own limits and user"
    for field in ("cgroup.cpu_max", "cgroup.pids_max", "rlimits", "user", "group"):
        found.unless_default(spec, field, Verdict.DROPPED, sandbox, "none")


def _judge_memory(found: Findings, spec: ServiceSpec, key: str) -> None:
    name = spec.name
    found.unless_default(spec, "cgroup.memory_max", Verdict.MAPPED, f"{key} (memory.max)", "none")
    if spec.memory_limit is None:
        found.mapped(name, "memory_limit", "none")
        found.mapped(name, "memory_grace", _NO_MEMORY)
    elif spec.cgroup.memory_max is None:
        found.approximated(name, "memory_limit", f"{key}: {_HARD}")
        found.approximated(
            name, "memory_grace", "with memory_limit, a hard limit: the OOM killer does not wait"
        )
    else:
        found.dropped(name, "memory_limit", _BOTH)
        found.dropped(name, "memory_grace", _BOTH)
