"""The file-descriptor budget: how many client connections the proxy may hold.

The proxy shares its process with supervision (in the daemon), so past some number of
connections it must stop accepting rather than take the descriptors health checks, the
control socket, log files and child pipes need. Without a `[proxy] max_connections` setting
the cap is derived from RLIMIT_NOFILE:

    reserve = 256 + limit // 8          kept for everything that is not the proxy
    max_connections = (limit - reserve) // 2

Supervision needs about 5 descriptors per instance (stdout and stderr pipes, a log file, a
health-check socket, the process handle) and some 40 of its own (control socket and its
clients, state and lock files, the event loop's epoll and signal pipe): the fixed 256 covers
a few dozen instances, the eighth grows with machines configured for more. Each client
connection is counted twice because it may hold one backend connection (idle keep-alive
connections give way when the budget is reached, see Context.room_for_upstream).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

FIXED_RESERVE = 256
MIN_CONNECTIONS = 16


def nofile_limit() -> int:
    """The process's soft RLIMIT_NOFILE (RLIM_INFINITY counts as 1 048 576)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def reserve_for(limit: int) -> int:
    """Descriptors left to everything but the proxy under a limit of `limit`."""
    return FIXED_RESERVE + limit // 8


def default_max_connections(limit: int | None = None) -> int:
    """The connection cap for a descriptor limit (the process's own by default)."""
    limit = nofile_limit() if limit is None else limit
    return max(MIN_CONNECTIONS, (limit - reserve_for(limit)) // 2)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as nginx's worker_rlimit_nofile does).

    The default soft limit (often 1024) is far below what a proxy needs; the hard limit is
    what the administrator allows. Returns (old soft, new soft).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY
        log.debug("cannot raise RLIMIT_NOFILE from %d to %s: %s", soft, hard, exc)
        return soft, soft
    return soft, hard
