"""CPU% and RSS of every instance's process tree, sampled by one owner on a schedule.

An instance is its process and everything below it (a gunicorn master and its workers): its
sample is the sum over the tree, found through one parent → children map per round, plus
whatever else sits in the instance's cgroup when it has one (`members`): a process that
double-forked and called setsid has left the tree but not the cgroup, and its memory counts
towards `memory_limit` all the same (without a cgroup, only the tree is measured). CPU% is
a difference between two readings of a process's CPU time, so whoever takes the
readings decides the measuring window (psutil's `cpu_percent(None)` measures since its
previous call on the same object: two readers of `ps` would each halve the other's window).
Only the sampler reads, every 10 s, or every 2 s while a live view follows the feed
(`next_after`); `ps`, `/metrics` and any view read the latest snapshot, and reading never
changes a number. A process is sampled once as soon as it comes up too (its RSS is then
known at once; its CPU% starts at 0.0 and is measured from there). A service with a short
`memory_grace` asks for a faster schedule (`pace`), and every scheduled round is handed to
`observe` (the memory_limit watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .clock import SYSTEM_CLOCK, Clock
from .process import tree_pids

log = logging.getLogger(__name__)

# CPU% is averaged over this long: cheap enough for hundreds of instances at ~0.02 % CPU.
INTERVAL = 10.0
# ... and over this long while a live view (corral top, a dashboard) follows the stats feed.
FOLLOWED_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class ProcessSample:
    cpu_percent: float  # over the last interval; 100.0 = one core
    rss_bytes: int
    processes: int = 1  # in the tree (the instance's process and its descendants)


_NOTHING = ProcessSample(0.0, 0, 0)


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
    """The only reader of instance CPU times; samples on its own schedule."""

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        *,
        interval: float = INTERVAL,
        followed_interval: float = FOLLOWED_INTERVAL,
        clock: Clock = SYSTEM_CLOCK,
        pace: Callable[[], float | None] = lambda: None,
        observe: Callable[[StatsSnapshot], None] = lambda _: None,
        members: Callable[[], Mapping[int, Iterable[int]]] = dict,
    ) -> None:
        self._pids = pids
        self._members = members  # instance pid → the pids in its cgroup (if it has one)
        self._pace = pace  # a shorter interval someone needs (memory_grace), if any
        self._observe = observe
        self._interval = interval
        self._followed_interval = followed_interval
        self._clock = clock
        self._last: dict[int, _Reading] = {}  # pid → the reading its CPU% is measured from
        self._latest = StatsSnapshot()
        self._next = asyncio.Event()
        self._followers = 0
        self._wake = asyncio.Event()

    @property
    def latest(self) -> StatsSnapshot:
        return self._latest

    async def run(self) -> None:
        """Sample until cancelled: every `interval`, or `followed_interval` while someone
        follows the feed (a live view)."""
        self._measure(os.getpid())  # starts the daemon's own window
        while True:
            self._observe(self.sample())
            self._wake.clear()
            wait = self._followed_interval if self._followers else self._interval
            pace = self._pace()
            await self._clock.wait(self._wake, wait if pace is None else min(wait, pace))

    async def next_after(self, seq: int) -> StatsSnapshot:
        """The first scheduled snapshot newer than `seq` (for periodic streams)."""
        async with self.followed():
            while self._latest.seq <= seq:
                await self._next.wait()
            return self._latest

    @contextlib.asynccontextmanager
    async def followed(self) -> AsyncIterator[None]:
        """While held, someone follows the stats live: the fast schedule."""
        self._followers += 1
        if self._followers == 1:
            self._wake.set()  # switch now, not at the end of a 10 s wait
        try:
            yield
        finally:
            self._followers -= 1

    def sample(self) -> StatsSnapshot:
        """One scheduled round over every live instance's tree."""
        members = self._members()
        trees = {pid: _instance_pids(pid, members) for pid in set(self._pids())}
        live = {member for tree in trees.values() for member in tree}
        for pid in list(self._last):
            if pid not in live and pid != os.getpid():
                del self._last[pid]
        samples = {pid: s for pid, tree in trees.items() if (s := self._tree(tree)) is not None}
        mine = self._measure(os.getpid()) or self._latest.daemon
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
        if pid in self._last:
            return
        sample = self._tree(_instance_pids(pid, self._members()))
        if sample is not None:
            processes = {**self._latest.processes, pid: sample}
            self._latest = dataclasses.replace(self._latest, processes=MappingProxyType(processes))

    def _tree(self, pids: list[int]) -> ProcessSample | None:
        """The sum over a tree (`pids[0]` its root); None if the root is gone."""
        root = self._measure(pids[0])
        if root is None:
            return None
        cpu, rss, count = root.cpu_percent, root.rss_bytes, 1
        for pid in pids[1:]:
            sample = self._measure(pid)
            if sample is not None:  # a child that exited meanwhile adds nothing
                cpu, rss, count = cpu + sample.cpu_percent, rss + sample.rss_bytes, count + 1
        return ProcessSample(round(cpu, 1), rss, count)

    def _measure(self, pid: int) -> ProcessSample | None:
        reading = _read(pid)
        if reading is None:  # gone (or no fd to read /proc with: this round without it)
            return None
        last = self._last.get(pid)
        self._last[pid] = reading
        if last is None or last.started != reading.started:  # new, or a recycled pid
            return ProcessSample(0.0, reading.rss)
        elapsed = reading.at - last.at
        used = reading.cpu - last.cpu
        return ProcessSample(round(100.0 * used / elapsed, 1) if elapsed > 0 else 0.0, reading.rss)


def _instance_pids(pid: int, members: Mapping[int, Iterable[int]]) -> list[int]:
    """`pid`'s tree and its cgroup's other members (`pid` first, each once)."""
    found = tree_pids(pid)
    seen = set(found)
    for member in members.get(pid, ()):
        if member not in seen:
            seen.add(member)
            found.append(member)
    return found


@dataclass(frozen=True, slots=True)
class _Reading:
    started: int  # the process's start time in clock ticks: tells a recycled pid apart
    cpu: float  # user + system seconds so far
    rss: int
    at: float  # monotonic time of the reading: CPU% is measured in real time, not a clock's


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(pid: int) -> _Reading | None:
    """One read of /proc/<pid>/stat: about 4x cheaper than psutil's two, for 100 instances
    every few seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    at = time.monotonic()
    # The command name (field 2) is in parentheses and may contain anything: split after it.
    fields = data[data.rindex(b")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])
        return _Reading(int(fields[19]), ticks / _TICK, int(fields[21]) * _PAGE, at)
    except (IndexError, ValueError):
        return None
