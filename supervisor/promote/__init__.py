"""`corral promote`: the plan carried to Docker, compose, Swarm, Kubernetes, Lambda and Knative.

`model.build_stack` turns the plan into a target-neutral model of what each service needs;
one module per target renders it into files and records a verdict per field (verdict.py).
Rendering is pure (plan in, {path: text} out), so the same input gives the same bytes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.model import Plan

from .errors import PromoteError
from .model import Stack, build_stack
from .verdict import Findings

TARGETS = ("docker", "compose", "swarm", "k8s", "lambda", "knative")
_MODULES = {
    "docker": "docker",
    "compose": "compose",
    "swarm": "swarm",
    "k8s": "kubernetes",
    "lambda": "aws_lambda",
    "knative": "knative",
}
DEFAULT_BASE_IMAGE = "python:3.11-slim"


@dataclass(frozen=True, slots=True)
class Options:
    """How to promote: the base image, an image registry prefix, Swarm's publish mode."""

    base_image: str = DEFAULT_BASE_IMAGE
    registry: str = ""
    publish_mode: str = "ingress"


@dataclass(frozen=True, slots=True)
class Result:
    """The files of one promotion (path relative to the output directory → text) and verdicts."""

    target: str
    files: dict[str, str]
    findings: Findings
    stack: Stack


def promote(
    plan: Plan, target: str, out: Path, services: list[str], options: Options = Options()
) -> Result:
    """Render `target`'s files for `services` (all when empty); nothing is written here."""
    if target not in TARGETS:
        raise PromoteError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    stack = build_stack(
        plan, out, services, base_image=options.base_image, registry=options.registry
    )
    found = Findings(target)
    module = importlib.import_module(f"{__name__}.{_MODULES[target]}")
    render: Callable[..., dict[str, str]] = module.render
    files = (
        render(stack, found, options.publish_mode) if target == "swarm" else render(stack, found)
    )
    found.complete([w.spec for w in stack.workloads.values()], plan.proxy)
    return Result(target, dict(sorted(files.items())), found, stack)


def write(result: Result, out: Path) -> list[Path]:
    """Write every file of `result` under `out`; returns the paths written."""
    written = []
    for name, text in result.files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def run_tools(result: Result, out: Path, *, deploy: bool, echo: Callable[[str], None]) -> None:
    """`--build` / `--deploy`: run docker, compose, kubectl or sam on the written files."""
    from . import deploy as tools

    stack, target = result.stack, result.target
    if target == "lambda":
        tools.sam(out, echo, deploy=deploy)
        return
    if deploy and target == "docker":
        raise PromoteError("the docker target builds images only; deploy with compose or swarm")
    tools.build_images(stack, out, echo, entry=target in ("compose", "swarm"))
    if not deploy:
        return
    if target == "compose":
        tools.deploy_compose(stack, out, echo)
    elif target == "swarm":
        tools.deploy_swarm(stack, out, echo)
    else:
        tools.deploy_kubectl(out / target, echo, kustomize=target == "k8s")


__all__ = [
    "DEFAULT_BASE_IMAGE",
    "TARGETS",
    "Options",
    "PromoteError",
    "Result",
    "promote",
    "run_tools",
    "write",
]
