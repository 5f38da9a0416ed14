"""A service's resource limits and identity: memory_limit, rlimits, cgroup caps, user/group.

- `memory_limit` / `memory_grace`: restart an instance whose process tree's RSS stays above the
  limit for the grace period (PM2's max_memory_restart), the reason recorded;
- `rlimits = { nofile = 65536, core = 0, nproc = [512, 1024] }`: setrlimit(2) in the child,
  soft and hard (one number sets both; "unlimited" is RLIM_INFINITY);
- `cgroup = { memory_max = "1GB", cpu_max = 1.5, pids_max = 256 }`: cgroup v2 caps on each
  instance's cgroup, enforced by the kernel (when the daemon has a delegated cgroup);
- `user` / `group`: run the instances as this user and group (the daemon must be root).

Only the form is checked here: the user may exist only where the config is deployed (a
container image, the server `corral systemd-unit` targets), so the daemon resolves names.
"""

from __future__ import annotations

import re

from config.model import CgroupLimits
from config.table import Table, show
from config.units import parse_size

UNLIMITED = -1  # RLIM_INFINITY on Linux, as the model stores it
# setrlimit(2) resources by the names prlimit(1) and docker's --ulimit use.
RLIMITS = (
    *("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile"),
    *("nproc", "rss", "rtprio", "rttime", "sigpending", "stack"),
)
# Limits in bytes: a size like "1GB" is accepted for them too.
_SIZED = frozenset({"as", "core", "data", "fsize", "memlock", "msgqueue", "rss", "stack"})
# POSIX portable user names (useradd's default rule), or a numeric id.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setuid(2)


def read_memory_limit(table: Table) -> tuple[int | None, float]:
    """(`memory_limit` in bytes or None, `memory_grace` in seconds)."""
    if not table.has("memory_limit"):
        if table.has("memory_grace"):
            raise table.error("memory_grace", "is set but memory_limit is not")
        return None, 30.0
    limit = table.size("memory_limit", 0)
    if limit < 1024 * 1024:
        raise table.expected("memory_limit", 'a size of at least 1MB, like "512MB"')
    return limit, table.duration("memory_grace", 30.0)


def read_rlimits(table: Table) -> dict[str, tuple[int, int]]:
    """`rlimits`: {name: (soft, hard)}, UNLIMITED for "unlimited"."""
    sub = table.table("rlimits", RLIMITS)
    if sub is None:
        return {}
    limits: dict[str, tuple[int, int]] = {}
    for name, value in sub.data.items():
        if isinstance(value, list):
            if len(value) != 2:
                raise sub.expected(name, "a limit or [soft, hard]")
            soft, hard = (_rlimit(sub, name, item) for item in value)
        else:
            soft = hard = _rlimit(sub, name, value)
        if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
            raise sub.error(name, f"soft limit {_show(soft)} is above the hard limit {_show(hard)}")
        limits[name] = (soft, hard)
    return limits


def _rlimit(sub: Table, name: str, value: object) -> int:
    if value == "unlimited":
        return UNLIMITED
    what = (
        'a number, a size like "1GB", or "unlimited"'
        if name in _SIZED
        else 'a number or "unlimited"'
    )
    if isinstance(value, str) and name in _SIZED:
        try:
            return parse_size(value)
        except (ValueError, OverflowError):
            raise sub.error(name, f"expected {what}, got {show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise sub.error(name, f"expected {what}, got {show(value)}")
    return value


def _show(limit: int) -> str:
    return "unlimited" if limit == UNLIMITED else str(limit)


def read_cgroup(table: Table) -> CgroupLimits:
    """`cgroup = { memory_max, cpu_max, pids_max }`."""
    sub = table.table("cgroup", ("memory_max", "cpu_max", "pids_max"))
    if sub is None:
        return CgroupLimits()
    memory = None
    if sub.has("memory_max"):
        memory = sub.size("memory_max", 0)
        if memory < 1024 * 1024:
            raise sub.expected("memory_max", 'a size of at least 1MB, like "1GB"')
    cpu = None
    if sub.has("cpu_max"):
        value = sub.data["cpu_max"]
        # At least 1 ms of CPU time per 100 ms period: the kernel's minimum quota.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0.01 <= value <= 4096
        ):
            raise sub.expected("cpu_max", "a number of CPUs from 0.01 to 4096, like 1.5")
        cpu = float(value)
    pids = sub.integer("pids_max", 0, minimum=1) if sub.has("pids_max") else None
    return CgroupLimits(memory_max=memory, cpu_max=cpu, pids_max=pids)


def read_identity(table: Table) -> tuple[str | None, str | None]:
    """(`user`, `group`): names or numeric ids; `group` needs `user`."""
    user = _identity(table, "user")
    group = _identity(table, "group")
    if group is not None and user is None:
        raise table.error("group", "is set but user is not (the group of which user?)")
    return user, group


def _identity(table: Table, key: str) -> str | None:
    if not table.has(key):
        return None
    value = table.data[key]
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _NAME.fullmatch(text) or _too_big(text):
        raise table.error(
            key, f'expected a {key} name like "www-data" or a numeric id, got {show(value)}'
        )
    return text


def _too_big(value: str) -> bool:
    return value.isdigit() and int(value) > _MAX_ID
