"""Run a daemon (or the standalone proxy) in this process, on uvloop, until a signal stops it.

Kept apart from cli.py so that client commands (`ps`, `logs`, `down` ...) never import asyncio,
uvloop or the daemon: they run once per keystroke and should start fast.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from config.model import Balance, Plan

from .output import LogPrinter


async def serve(plan: Plan, *, printer: LogPrinter | None, watch: bool = False) -> int:
    from proxy.limits import raise_nofile_limit

    from .daemon import Daemon
    from .reload import Reloader

    raise_nofile_limit()  # before the proxy derives its connection cap from it

    daemon = Daemon(plan)
    reloader = Reloader(daemon)
    daemon.reload_hook = reloader.reload
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.shutdown_requested.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload_soon)
    tasks: list[asyncio.Task[Any]] = []
    if printer is not None:
        tasks.append(asyncio.create_task(print_logs(daemon, printer)))
    if watch or any(spec.watch for spec in plan.services.values()):
        from .watch import watch_project

        # Services with their own `watch` patterns are watched always; --watch adds the
        # defaults for every service and corral.toml itself.
        tasks.append(asyncio.create_task(watch_project(daemon, reloader, everything=watch)))
    try:
        await daemon.run()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return 0


async def print_logs(daemon: Any, printer: LogPrinter) -> None:
    follower = daemon.logs.follow()
    try:
        async for record in follower:
            printer.print(record.to_json())
    finally:
        follower.close()


def serve_blocking(plan: Plan, printer: LogPrinter | None, watch: bool) -> int:
    """`corral up` / `corral daemon`: run the daemon until SIGINT/SIGTERM."""
    import uvloop

    return uvloop.run(serve(plan, printer=printer, watch=watch))


def proxy_blocking(
    listen: list[tuple[str, int]], backends: list[tuple[str, int]], balance: Balance
) -> int:
    """`corral proxy`: only the load balancer, with static backends."""
    import uvloop

    from proxy.limits import raise_nofile_limit
    from proxy.standalone import run_standalone

    raise_nofile_limit()  # before the proxy derives its connection cap from it

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_standalone(listen, backends, balance, shutdown=stop)
        return 0

    return uvloop.run(go())
