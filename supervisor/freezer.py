"""Freezing an instance's processes, and thawing them: `idle = "freeze"` (docs/serverless.md).

Two ways, the first one that works:

- the instance's cgroup v2 `cgroup.freeze`: every process in it stops, its children too, and
  none of them can tell (no SIGCHLD to a parent, no EINTR; the kernel freezes them where they
  are). A fatal signal still kills a frozen process;
- otherwise SIGSTOP to the instance's process group and every descendant psutil finds, and
  SIGCONT back. A process that escaped the tree (setsid after a double fork) keeps running.

Thawing is what a request waits on, so it is a write (or a few signals) and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

from .cgroup import InstanceCgroup
from .process import descendants

log = logging.getLogger(__name__)


class Freezer:
    """Freezes and thaws the processes of one process run (leader `pid`)."""

    def __init__(self, pid: int, cgroup: InstanceCgroup | None) -> None:
        self._pid = pid
        self._cgroup = cgroup
        self._stopped: list[int] = []  # pids sent SIGSTOP (the fallback)
        self.mechanism = ""  # "cgroup" or "SIGSTOP" while frozen

    @property
    def frozen(self) -> bool:
        return bool(self.mechanism)

    def freeze(self) -> str:
        """Freeze every process of the run; returns how ("cgroup" or "SIGSTOP")."""
        if self.frozen:
            return self.mechanism
        if self._cgroup is not None:
            try:
                self._cgroup.freeze(True)
            except OSError as exc:
                log.warning("cannot freeze cgroup %s (%s); using SIGSTOP", self._cgroup.path, exc)
            else:
                self.mechanism = "cgroup"
                return self.mechanism
        # The group first (the leader and whatever it forked in its session), then strays
        # that left the group but not the tree.
        pids = [self._pid, *(p.pid for p in descendants(self._pid))]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGSTOP)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        self._stopped = pids
        self.mechanism = "SIGSTOP"
        return self.mechanism

    def thaw(self) -> None:
        """Let every frozen process go on (a no-op when not frozen)."""
        if self.mechanism == "cgroup" and self._cgroup is not None:
            try:
                self._cgroup.freeze(False)
            except OSError as exc:
                # The cgroup is gone with its processes, or unwritable: nothing left to thaw
                # through it; signal what we know of, in case.
                log.warning("cannot thaw cgroup %s: %s", self._cgroup.path, exc)
                self._continue([self._pid, *(p.pid for p in descendants(self._pid))])
        elif self.mechanism == "SIGSTOP":
            self._continue(self._stopped)
        self._stopped = []
        self.mechanism = ""

    def _continue(self, pids: list[int]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGCONT)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
