"""`--build` and `--deploy`: the real tools run on the written files (docker, compose, kubectl, sam).

Each command is printed before it runs; the first that fails stops the promotion with its exit
status. `$DOCKER`, `$KUBECTL` and `$SAM` choose the programs (default: the ones on PATH);
`$DOCKER_BUILD_NETWORK` is passed to `docker build --network` (an engine without a default
bridge network needs `host`), and `$DOCKER_BUILD_ARGS` (`NAME=VALUE ...`) as `--build-arg`s,
e.g. `PIP_INDEX_URL=https://mirror/simple` (the Dockerfiles declare the pip and uv index args).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import PromoteError
from .model import Stack

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


def build_images(stack: Stack, out: Path, echo: Echo, *, entry: bool = True) -> None:
    """docker build every image of the stack (BuildKit: it reads the per-Dockerfile ignore).

    `entry`: the entry proxy's image too (the targets that run Corral's proxy write it).
    """
    from .dockerfile import dockerfile_path
    from .entry import DIR

    build = [_tool("DOCKER", "docker"), "build"]
    if os.environ.get("DOCKER_BUILD_NETWORK"):
        build += ["--network", os.environ["DOCKER_BUILD_NETWORK"]]
    for arg in os.environ.get("DOCKER_BUILD_ARGS", "").split():
        build += ["--build-arg", arg]
    for w in stack.workloads.values():
        dockerfile = str(out / dockerfile_path(w))
        _run([*build, "-f", dockerfile, "-t", w.image, str(stack.root)], echo)
    if entry and stack.entry is not None:
        _run([*build, "-t", stack.entry.image, str(out / DIR)], echo)


def deploy_compose(stack: Stack, out: Path, echo: Echo) -> None:
    """docker compose up -d --wait (images built first): returns once all are healthy or done."""
    docker = _tool("DOCKER", "docker")
    _run([docker, "compose", "-f", str(out / "compose.yaml"), "up", "-d", "--wait"], echo)


def deploy_swarm(stack: Stack, out: Path, echo: Echo, *, timeout: float = 300.0) -> None:
    """docker stack deploy, then wait until every long-running service has all its replicas."""
    docker = _tool("DOCKER", "docker")
    _run(
        [
            docker,
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            str(out / "stack.yaml"),
            stack.project,
        ],
        echo,
    )
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = _swarm_pending(docker, stack)
        if not pending:
            rolled_back = _rolled_back(docker, stack)
            if rolled_back:
                raise PromoteError(
                    f"the last update of {', '.join(rolled_back)} failed and was rolled back "
                    "(docker service ps shows why)"
                )
            echo(f"stack {stack.project}: every service has its replicas")
            return
        time.sleep(1)
    raise PromoteError(
        f"stack {stack.project} not converged after {timeout:g}s: {', '.join(pending)}"
    )


def _swarm_pending(docker: str, stack: Stack) -> list[str]:
    """Services still short of replicas or mid-update; raises if an update was rolled back."""
    result = subprocess.run(
        [docker, "stack", "services", stack.project, "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return [result.stderr.strip() or "docker stack services failed"]
    pending = []
    oneshots = {f"{stack.project}_{w.name}" for w in stack.workloads.values() if w.oneshot}
    names = []
    for line in result.stdout.splitlines():
        row = json.loads(line)
        names.append(str(row["Name"]))
        running, _, desired = str(row["Replicas"]).partition("/")
        if row["Name"] not in oneshots and running != desired.split(" ")[0]:
            pending.append(f"{row['Name']} {row['Replicas']}")
    # Replicas are complete all through a start-first update: its own state says when it ends.
    for name, state in _update_states(docker, names):
        if state in ("updating", "paused", "rollback_started", "rollback_paused"):
            pending.append(f"{name} {state}")
    return pending


def _rolled_back(docker: str, stack: Stack) -> list[str]:
    names = [f"{stack.project}_{name}" for name in stack.workloads]
    return [n for n, state in _update_states(docker, names) if state == "rollback_completed"]


def _update_states(docker: str, names: list[str]) -> list[tuple[str, str]]:
    """(service, its UpdateStatus.State or "none") for each of `names`."""
    states = subprocess.run(
        [docker, "service", "inspect", "--format", _UPDATE_STATE, *names],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return list(zip(names, states, strict=False))


_UPDATE_STATE = "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{else}}none{{end}}"


def deploy_kubectl(path: Path, echo: Echo, *, kustomize: bool) -> None:
    """kubectl apply -k (kustomization) or -f (plain manifests)."""
    kubectl = _tool("KUBECTL", "kubectl")
    _run([kubectl, "apply", "-k" if kustomize else "-f", str(path)], echo)


def sam(out: Path, echo: Echo, *, deploy: bool) -> None:
    """sam build, and sam deploy --guided when asked to deploy."""
    tool = _tool("SAM", "sam")
    _run([tool, "build", "--template-file", str(out / "template.yaml")], echo, cwd=out)
    if deploy:
        _run([tool, "deploy", "--guided"], echo, cwd=out)


def _tool(variable: str, default: str) -> str:
    name = os.environ.get(variable) or default
    path = shutil.which(name)
    if path is None:
        raise PromoteError(f"{name} not found on PATH (set ${variable} to the program to use)")
    return path


def _run(argv: Sequence[str], echo: Echo, cwd: Path | None = None) -> None:
    echo("$ " + " ".join(argv))
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    status = subprocess.run(list(argv), cwd=cwd, env=env, stdout=sys.stderr, check=False).returncode
    if status != 0:
        raise PromoteError(f"{Path(argv[0]).name} {argv[1]} failed (exit {status})")
