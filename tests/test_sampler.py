"""CPU% and RSS are sampled by one owner on a schedule; reading them has no side effect."""

from __future__ import annotations

import asyncio
import os
import sys

import psutil

from supervisor.sampler import Sampler

from .conftest import wait_until
from .fakeclock import FakeClock


async def test_reading_does_not_change_the_numbers_and_rounds_advance_the_sequence() -> None:
    busy = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    try:
        # Well into its loop (just after exec the kernel's RSS counters may still read 0).
        spinner = psutil.Process(busy.pid)
        await wait_until(lambda: sum(spinner.cpu_times()[:2]) > 0.05)
        clock = FakeClock()
        sampler = Sampler(lambda: [busy.pid], clock=clock)
        sampler.track(busy.pid)  # first sample when it comes up: RSS known, CPU baseline
        first = sampler.latest
        assert first.of(busy.pid).rss_bytes > 0
        assert first.of(busy.pid).cpu_percent == 0.0
        used = sum(spinner.cpu_times()[:2])
        await wait_until(lambda: sum(spinner.cpu_times()[:2]) > used + 0.1, what="CPU used")
        # Reading twice changes nothing: only a scheduled round measures.
        assert sampler.latest is first and sampler.latest.of(busy.pid) == first.of(busy.pid)
        sampler.sample()
        second = sampler.latest
        assert second.seq == first.seq + 1
        assert second.of(busy.pid).cpu_percent > 0.0  # the busy loop's share since track()
        assert second.daemon.rss_bytes > 0
        assert sampler.latest.of(busy.pid) == second.of(busy.pid)
    finally:
        busy.kill()
        await busy.wait()


async def test_periodic_feed_and_gone_processes() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    # Right after exec its RSS is a page or two (and /proc/<pid>/stat's counter may lag at
    # 0): sample one that has loaded its interpreter.
    await wait_until(lambda: psutil.Process(child.pid).memory_info().rss > 1 << 20)
    pids = [child.pid]
    clock = FakeClock()
    sampler = Sampler(lambda: pids, interval=10.0, followed_interval=2.0, clock=clock)
    runner = asyncio.create_task(sampler.run())
    try:
        snap = await asyncio.wait_for(sampler.next_after(0), 5)
        assert snap.of(child.pid).rss_bytes > 0
        child.kill()
        await child.wait()
        pids.clear()
        async with asyncio.timeout(5):  # awaited here: it follows from the current snapshot
            later = await sampler.next_after(sampler.latest.seq)
        assert later.seq > snap.seq and child.pid not in later.processes
        assert later.of(None).rss_bytes == 0 and later.of(os.getpid()).rss_bytes == 0
        # Followed by a live view: the fast schedule; nobody following: the slow one.
        assert 2.0 in clock.waits
        seen = len(clock.waits)
        await asyncio.sleep(0.05)
        assert set(clock.waits[seen:]) == {10.0}
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
