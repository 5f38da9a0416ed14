"""Keeps `state.json` current: every pid change is written, coalesced per 50 ms burst.

A daemon killed hard (SIGKILL, OOM) leaves the file as the record the next daemon uses to stop
what it left (see statefile.StateDir.reclaim).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from .statefile import StateDir

log = logging.getLogger(__name__)

_DELAY = 0.05


class Recorder:
    """Writes the daemon's token, instance pids and runtime scale counts."""

    def __init__(
        self,
        state: StateDir,
        token: str,
        pids: Callable[[], Mapping[str, int]],
        scaled: Callable[[], dict[str, list[int]]],
    ) -> None:
        self._state = state
        self._token = token
        self._pids = pids
        self._scaled = scaled
        self._timer: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        """Write within 50 ms. Starting or stopping 100 instances changes states hundreds of
        times a second: one write per burst. A hard kill inside that window is still covered
        by PDEATHSIG and the token sweep, which need no pid list."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_DELAY, self.now)

    def now(self) -> None:
        """Write at once (and drop a pending write)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._state.save(self._token, dict(self._pids()), self._scaled())
        except OSError as exc:
            log.error("cannot write %s: %s", self._state.state_file, exc)
