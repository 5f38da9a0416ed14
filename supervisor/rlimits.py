"""A service's `rlimits`, as setrlimit(2) calls prepared before fork.

The daemon checks them when the service is brought up: raising a hard limit above the
daemon's own needs CAP_SYS_RESOURCE (root has it, unless a container took it away), and an
instance that could not start for it would only crash-loop with "Exception occurred in
preexec_fn". The child then only calls setrlimit with the numbers computed here.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping

from .errors import SupervisorError

Limit = tuple[int, int, int]  # (RLIMIT_* resource, soft, hard)

INFINITY = resource.RLIM_INFINITY
_CAP_SYS_RESOURCE = 24  # linux/capability.h


def prepare(name: str, rlimits: Mapping[str, tuple[int, int]]) -> tuple[Limit, ...]:
    """The setrlimit calls for `rlimits` of service `name`; SupervisorError if this daemon
    may not set one of them."""
    calls = []
    for key, (soft, hard) in rlimits.items():
        res = getattr(resource, f"RLIMIT_{key.upper()}", None)
        if res is None:  # config allows only names Linux has; another OS may lack one
            raise SupervisorError(f"services.{name}.rlimits.{key}: not supported here")
        soft = INFINITY if soft < 0 else soft
        hard = INFINITY if hard < 0 else hard
        _, ours = resource.getrlimit(res)
        if ours != INFINITY and (hard == INFINITY or hard > ours) and not may_raise():
            raise SupervisorError(
                f"services.{name}.rlimits.{key}: hard limit {_show(hard)} is above the "
                f"daemon's own ({_show(ours)}), and only a daemon with CAP_SYS_RESOURCE "
                "(root, outside a container that drops it) may raise it"
            )
        calls.append((res, soft, hard))
    return tuple(calls)


def may_raise(status: str | None = None) -> bool:
    """Does this process have CAP_SYS_RESOURCE (in /proc/self/status's CapEff)?"""
    if status is None:
        try:
            with open("/proc/self/status") as f:
                status = f.read()
        except OSError:
            return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    return False


def _show(value: int) -> str:
    return "unlimited" if value == INFINITY else str(value)
