"""Run a daemon (or the standalone proxy) in this process, on uvloop, until a signal stops it.

Kept apart from cli.py so that client commands (`ps`, `logs`, `down` ...) never import asyncio,
uvloop or the daemon: they run once per keystroke and should start fast.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from config.entry import EntrySpec
from config.model import Balance, Plan

from .output import LogPrinter

if TYPE_CHECKING:
    from .daemon import Companion, Daemon

log = logging.getLogger(__name__)


async def serve(plan: Plan, *, printer: LogPrinter | None, watch: bool = False) -> int:
    from proxy.limits import raise_nofile_limit

    from .daemon import Daemon
    from .reload import Reloader

    raise_nofile_limit()  # before the proxy derives its connection cap from it

    daemon = Daemon(plan)
    reloader = Reloader(daemon)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_stop_signal, daemon)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload_soon)
    companions: list[Companion] = []
    if printer is not None:
        companions.append(("log printer", lambda: print_logs(daemon, printer)))
    if watch or any(spec.watch for spec in plan.services.values()):
        from .watch import watch_project

        # Services with their own `watch` patterns are watched always; --watch adds the
        # defaults for every service and corral.toml itself.
        companions.append(("watcher", lambda: watch_project(daemon, reloader, everything=watch)))
    await daemon.run(companions=companions)
    return 0


def _on_stop_signal(daemon: Daemon) -> None:
    # Signal handlers only flip state: the daemon's run does the stopping.
    if not daemon.shutdown_requested.is_set():
        log.warning("stopping (press Ctrl-C again to kill everything at once)")
        daemon.request_shutdown()
    else:
        # As docker compose does: the second Ctrl-C means "now".
        log.warning("killing everything")
        daemon.kill_everything()


async def print_logs(daemon: Any, printer: LogPrinter) -> None:
    follower = daemon.logs.follow()
    try:
        async for record in follower:
            printer.print(record.to_json())
    except OSError as exc:  # the terminal went away: stop printing, keep supervising
        log.warning("log printer stopped: %s", exc)
    finally:
        follower.close()


def serve_blocking(plan: Plan, printer: LogPrinter | None, watch: bool) -> int:
    """`corral up` / `corral daemon`: run the daemon until SIGINT/SIGTERM."""
    import uvloop

    return uvloop.run(serve(plan, printer=printer, watch=watch))


def proxy_blocking(
    listen: list[tuple[str, int]],
    backends: list[tuple[str, int]],
    balance: Balance,
    backend_dns: list[tuple[str, int]] | None = None,
    resolve_interval: float = 2.0,
) -> int:
    """`corral proxy`: only the load balancer, with fixed and DNS-discovered backends."""
    from proxy.standalone import run_standalone

    async def go(stop: asyncio.Event) -> None:
        await run_standalone(
            listen,
            backends,
            balance,
            shutdown=stop,
            backend_dns=backend_dns,
            resolve_interval=resolve_interval,
        )

    return _until_signalled(go)


def entry_blocking(entry: EntrySpec) -> int:
    """`corral proxy --config FILE`: the entry proxy of a promoted stack."""
    from proxy.standalone import run_entry

    async def go(stop: asyncio.Event) -> None:
        await run_entry(entry, shutdown=stop)

    return _until_signalled(go)


def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    import uvloop

    from proxy.limits import raise_nofile_limit

    raise_nofile_limit()  # before the proxy derives its connection cap from it

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)
        return 0

    return uvloop.run(go())


__all__ = ["print_logs", "proxy_blocking", "serve", "serve_blocking"]
