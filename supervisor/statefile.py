"""The daemon's runtime state on disk: one-daemon lock, instance pids, runtime scale counts.

A daemon that dies hard (SIGKILL, OOM) leaves this file behind; the next one reads it to stop
whatever the dead one started, so there are never two copies of an instance on one port.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, TextIO

import psutil

from .errors import AlreadyRunning
from .privatedir import make_private_dir, private_file
from .process import kill_stale

log = logging.getLogger(__name__)


class StateDir:
    """`<state_dir>/daemon.lock` and `<state_dir>/state.json` (the token: dir 0700, file 0600)."""

    def __init__(self, path: Path, config: Path | None = None) -> None:
        self.path = path
        self.config = config  # the config file this state belongs to
        self._lock_file: TextIO | None = None
        self._create_times: dict[int, float] = {}

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def lock(self) -> None:
        """Take the project lock for this process's lifetime (released by the kernel on death)."""
        make_private_dir(self.path)
        fd = private_file(self.path / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND)
        lock = open(fd, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            owner = self.read().get("config")
            serving = f" for {owner}" if isinstance(owner, str) else ""
            raise AlreadyRunning(
                f"a corral daemon (pid {holder}) is already running{serving} "
                f"with state dir {self.path}"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def reclaim(self) -> int:
        """Stop what a previous daemon (now dead: we hold the lock) left running."""
        previous = self.read()
        token = previous.get("token")
        if not isinstance(token, str):
            return 0
        pids: dict[int, float] = {}
        for entry in previous.get("instances", {}).values():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                pids[int(entry["pid"])] = float(entry["create_time"])
        return kill_stale(token, pids)

    def save(self, token: str, pids: dict[str, int], scaled: dict[str, list[int]]) -> None:
        """Write atomically: a crash mid-write must not lose the previous state."""
        instances = {}
        for key, pid in pids.items():
            started = self._create_time(pid)
            if started is not None:
                instances[key] = {"pid": pid, "create_time": started}
        # Only running instances' start times are worth keeping; every restart adds a pid.
        live = set(pids.values())
        self._create_times = {p: t for p, t in self._create_times.items() if p in live}
        data = {
            "pid": os.getpid(),
            "config": str(self.config) if self.config else None,
            "token": token,
            "instances": instances,
            "scaled": scaled,
        }
        tmp = self.state_file.with_suffix(".tmp")
        with open(private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
            f.write(json.dumps(data, indent=1))
        os.replace(tmp, self.state_file)

    def scaled(self) -> dict[str, list[int]]:
        """Runtime scale counts: {service: [count, instances-in-config-when-scaled]}."""
        state = self.read()
        if self.config is not None and state.get("config", str(self.config)) != str(self.config):
            return {}  # left by a daemon of another config sharing this state_dir
        raw = state.get("scaled", {})
        out: dict[str, list[int]] = {}
        if isinstance(raw, dict):
            for name, pair in raw.items():
                if (
                    isinstance(pair, list)
                    and len(pair) == 2
                    and all(isinstance(x, int) for x in pair)
                ):
                    out[str(name)] = [pair[0], pair[1]]
        return out

    def _create_time(self, pid: int) -> float | None:
        if pid not in self._create_times:
            try:
                self._create_times[pid] = psutil.Process(pid).create_time()
            except psutil.Error:
                return None
        return self._create_times[pid]
