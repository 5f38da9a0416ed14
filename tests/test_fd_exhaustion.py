"""Out of file descriptors, the daemon loses track of nothing and blames no instance."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

from .conftest import (
    all_ready,
    pid_alive,
    rows_of,
    running_daemon,
    state_of,
    wait_until,
    web_service,
    write_config,
)


@contextlib.contextmanager
def no_fds_left() -> Iterator[None]:
    """Really exhaust this process's fds (the in-process daemon's): every open() and socket()
    fails with EMFILE until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 16, hard))
    held = []
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_out_of_fds_no_instance_fails_and_no_process_is_lost(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web", instances=2, extra='stop_timeout = "2s"'))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        victim, survivor = (int(r["pid"]) for r in rows_of(daemon, "web"))  # type: ignore[call-overload]

        def failed_spawns() -> int:
            return sum(
                1
                for e in daemon.events.recent()
                if e.instance == "web.1"
                and e.new == "crashed"
                and "Too many open files" in e.detail
            )

        with no_fds_left():
            os.kill(victim, signal.SIGKILL)
            # web.1 cannot be respawned (no fds for its pipes): it retries with backoff,
            # and that is not its fault, so it is never failed for it.
            await wait_until(lambda: failed_spawns() >= 8, what="respawns failing with EMFILE")
            # Meanwhile web.2's health probes cannot even connect: no verdict, still ready.
            assert state_of(daemon, "web.2") == "ready"
            assert not any(r["state"] == "failed" for r in daemon.ps())
            # A stop while out of fds still stops and reaps the whole process.
            await daemon.stop(["web.2"])
            assert state_of(daemon, "web.2") == "stopped"
            assert not pid_alive(survivor)
        await daemon.start(["web.2"])
        await wait_until(lambda: all_ready(daemon, "web", 2), what="both back once fds are free")
        assert not pid_alive(victim)
    # running_daemon: nothing left running, and no supervisor error was caught on the way.
