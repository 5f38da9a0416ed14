"""The pod side shared by the k8s and Knative targets: names, containers, probes, waits.

Probe periods and timeouts are whole seconds (rounded up); a dependent waits in init
containers that run its own image: for a Job to complete (reading its status from the API
server with the pod's ServiceAccount token) or for a Service to accept connections.
"""

from __future__ import annotations

import math
from typing import Any

from config.model import DependCondition, HealthKind

from .model import Probe, Stack, Workload, image_name
from .resources import k8s_ids, k8s_resources

WAITER = "corral-waiter"  # the ServiceAccount of pods that wait for Jobs

# Run by an init container with the service's own image: no extra image to pull.
_WAIT_FOR_JOB = """\
import json, os, ssl, sys, time, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ns = open(sa + "/namespace").read().strip()
url = f"https://kubernetes.default.svc/apis/batch/v1/namespaces/{ns}/jobs/%(job)s"
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
while True:
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read()})
    try:
        status = json.load(urllib.request.urlopen(req, context=ctx, timeout=5)).get("status", {})
    except OSError as exc:
        print("waiting for job %(job)s:", exc, flush=True)
    else:
        if status.get("succeeded"):
            sys.exit(0)
        if any(c["type"] == "Failed" and c["status"] == "True" for c in status.get("conditions", [])):
            sys.exit("job %(job)s failed")
    time.sleep(2)
"""
_WAIT_FOR_PORT = """\
import socket, time
while True:
    try:
        socket.create_connection(("%(host)s", %(port)d), timeout=2).close()
        break
    except OSError as exc:
        print("waiting for %(host)s:%(port)d:", exc, flush=True)
        time.sleep(1)
"""


def k8s_name(name: str) -> str:
    """A DNS-1123 label (Kubernetes object names allow no '_')."""
    return image_name(name).replace("_", "-").replace(".", "-")


def labels(stack: Stack, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": k8s_name(name), "app.kubernetes.io/part-of": stack.project}


def seconds(value: float) -> int:
    """Whole seconds >= 1, rounded up (probe periods and timeouts are integers)."""
    return max(1, math.ceil(value))


def container(stack: Stack, w: Workload, *, knative: bool = False) -> dict[str, Any]:
    """The service's container: image, args (the image's ENTRYPOINT stays), port, env, probes."""
    c: dict[str, Any] = {"name": k8s_name(w.name), "image": w.image}
    if not knative:
        c["imagePullPolicy"] = "IfNotPresent"
    c["args"] = list(w.command)
    if w.port is not None:
        port: dict[str, Any] = {"containerPort": w.port}
        c["ports"] = [port if knative else {"name": "main", **port, "protocol": "TCP"}]
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in w.env.items()]
    if not knative:
        instance = {"fieldRef": {"fieldPath": "metadata.name"}}
        env.append({"name": "CORRAL_INSTANCE", "valueFrom": instance})
    if env:
        c["env"] = env
    if w.file_env:
        c["envFrom"] = [{"configMapRef": {"name": f"{k8s_name(w.name)}-env"}}]
    if w.probe is not None and not w.oneshot:
        probe = w.probe
        c["readinessProbe"] = _probe(probe, w, probe.retries)
        if probe.start_period and not knative:
            startup = _probe(probe, w, seconds(probe.start_period / probe.interval))
            c["startupProbe"] = startup
        if probe.liveness:
            c["livenessProbe"] = _probe(probe, w, 2 * probe.retries)
    if (resources := k8s_resources(w.spec)) is not None:
        c["resources"] = resources
    if not knative:
        c["securityContext"] = {"allowPrivilegeEscalation": False}
    elif ids := k8s_ids(w.spec):
        c["securityContext"] = ids  # Knative allows no pod securityContext by default
    return c


def _probe(probe: Probe, w: Workload, failures: int) -> dict[str, Any]:
    if probe.kind is HealthKind.HTTP:
        handler: dict[str, Any] = {"httpGet": {"path": probe.path, "port": w.port}}
    elif probe.kind is HealthKind.TCP:
        handler = {"tcpSocket": {"port": w.port}}
    else:
        handler = {"exec": {"command": list(probe.command)}}
    return {
        **handler,
        "periodSeconds": seconds(probe.interval),
        "timeoutSeconds": seconds(probe.timeout),
        "failureThreshold": failures,
    }


def job_dependencies(stack: Stack, w: Workload) -> list[str]:
    """The oneshot dependencies `w` waits to complete (hence needs the waiter account)."""
    return [
        dep
        for dep, cond in w.depends_on.items()
        if cond is DependCondition.COMPLETED and stack.workloads[dep].oneshot
    ]


def init_containers(stack: Stack, w: Workload) -> list[dict[str, Any]]:
    """One init container per dependency Kubernetes can wait for (completed, or healthy with a port)."""
    waits: list[dict[str, Any]] = []
    for dep, cond in w.depends_on.items():
        other = stack.workloads[dep]
        if cond is DependCondition.COMPLETED:
            code = _WAIT_FOR_JOB % {"job": k8s_name(dep)}
        elif cond is DependCondition.HEALTHY and other.port is not None:
            code = _WAIT_FOR_PORT % {"host": k8s_name(dep), "port": other.port}
        else:
            continue
        waits.append(
            {
                "name": f"wait-for-{k8s_name(dep)}",
                "image": w.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", code],
                "securityContext": {"allowPrivilegeEscalation": False},
            }
        )
    return waits
