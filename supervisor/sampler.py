"""CPU% and RSS of every instance process, sampled by one owner on a schedule.

psutil's `cpu_percent(None)` measures since its previous call on the same object, so whoever
calls it decides the measuring window. Only the sampler calls it, every `interval`; `ps`,
`/metrics` and any later view read the latest snapshot, and reading never changes a number.
A process is sampled once as soon as it comes up too (its RSS is then known at once; its CPU%
starts at 0.0 and is measured from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import psutil

from .clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class ProcessSample:
    cpu_percent: float  # over the last interval; 100.0 = one core
    rss_bytes: int


_NOTHING = ProcessSample(0.0, 0)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """One round of samples; `seq` grows by one per scheduled round."""

    seq: int = 0
    taken_at: float = 0.0  # wall clock
    processes: Mapping[int, ProcessSample] = field(default_factory=lambda: MappingProxyType({}))
    daemon: ProcessSample = _NOTHING

    def of(self, pid: int | None) -> ProcessSample:
        """The sample of `pid` (zeros when it has none yet)."""
        return self.processes.get(pid, _NOTHING) if pid is not None else _NOTHING


class Sampler:
    """Owns the psutil handles, and the only calls to cpu_percent()."""

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        *,
        interval: float = INTERVAL,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._pids = pids
        self._interval = interval
        self._clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._self = psutil.Process(os.getpid())
        self._latest = StatsSnapshot()
        self._next = asyncio.Event()

    @property
    def latest(self) -> StatsSnapshot:
        return self._latest

    async def run(self) -> None:
        """Sample every `interval` until cancelled."""
        self._self.cpu_percent(None)  # starts the daemon's own window
        while True:
            self.sample()
            await self._clock.sleep(self._interval)

    async def next_after(self, seq: int) -> StatsSnapshot:
        """The first scheduled snapshot newer than `seq` (for periodic streams)."""
        while self._latest.seq <= seq:
            await self._next.wait()
        return self._latest

    def sample(self) -> StatsSnapshot:
        """One scheduled round over every live instance."""
        live = set(self._pids())
        for pid in list(self._procs):
            if pid not in live:
                del self._procs[pid]
        samples = {pid: s for pid in live if (s := self._measure(pid)) is not None}
        mine = self._latest.daemon
        with contextlib.suppress(psutil.Error, OSError):
            mine = ProcessSample(self._self.cpu_percent(None), self._self.memory_info().rss)
        self._latest = StatsSnapshot(
            seq=self._latest.seq + 1,
            taken_at=self._clock.wall(),
            processes=MappingProxyType(samples),
            daemon=mine,
        )
        self._next.set()
        self._next = asyncio.Event()
        return self._latest

    def track(self, pid: int) -> None:
        """A process just came up: sample it now, outside the schedule (its RSS, CPU 0.0)."""
        if pid in self._procs:
            return
        sample = self._measure(pid)
        if sample is not None:
            processes = {**self._latest.processes, pid: sample}
            self._latest = StatsSnapshot(
                seq=self._latest.seq,
                taken_at=self._latest.taken_at,
                processes=MappingProxyType(processes),
                daemon=self._latest.daemon,
            )

    def _measure(self, pid: int) -> ProcessSample | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                return ProcessSample(proc.cpu_percent(None), proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        except OSError as exc:  # out of fds: skip this round, keep the handle
            log.debug("cannot sample pid %d: %s", pid, exc)
            return None
