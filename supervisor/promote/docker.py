"""`corral promote docker`: one image per service (Dockerfile + .dockerignore), nothing else.

What runs the images (replicas, dependencies, routes, restarts) is the job of the compose,
swarm and k8s targets; here those settings are reported as dropped, with where they go instead.
"""

from __future__ import annotations

from .compose import DOCKER_START_TIMEOUT, judge_health
from .dockerfile import judge_image, render_image
from .model import Stack
from .verdict import PROXY, Findings, Verdict, field_paths

ELSEWHERE = "an image alone does not carry it: use the compose, swarm or k8s target"
# Fields an image carries; every other one is about running it.
_IMAGE_FIELDS = (
    "name",
    "command",
    "cwd",
    "venv",
    "requirements",
    "python",
    "stop_signal",
    "port",
    "auto_port",
    "app",
)


def render(stack: Stack, found: Findings) -> dict[str, str]:
    """The Dockerfiles and ignore files of every selected service."""
    files: dict[str, str] = {}
    for w in stack.workloads.values():
        files |= render_image(stack, w)
        judge_image(stack, w, found)
        spec, name = w.spec, w.name
        found.mapped(name, "name", "image name " + w.image)
        if spec.auto_port:
            found.approximated(name, "port", f'"auto": EXPOSE {w.port} and PORT={w.port}')
        else:
            found.mapped(
                name, "port", f"EXPOSE {w.port} and PORT={w.port}" if w.port else "no port"
            )
        found.mapped(name, "auto_port", "see port")
        found.mapped(name, "app", "not needed: the image runs the command")
        judge_health(w, found, replaced_by=None)
        if w.probe is not None:
            found.record(name, "start_timeout", *DOCKER_START_TIMEOUT)
        for field in field_paths(spec):
            if field.startswith("health.") or field in _IMAGE_FIELDS:
                continue
            if field == "start_timeout" and w.probe is not None:
                continue
            found.unless_default(spec, field, Verdict.DROPPED, ELSEWHERE, "not set")
    if stack.plan.proxy is not None:
        for field in field_paths(stack.plan.proxy):
            found.dropped(PROXY, field, ELSEWHERE)
    return files
