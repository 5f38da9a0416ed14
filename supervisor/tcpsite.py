"""An aiohttp application served on a TCP address (the dashboard's and /metrics' listeners)."""

from __future__ import annotations

import os

from aiohttp import web

from config.render import format_address

from .errors import SupervisorError


async def serve_tcp(
    app: web.Application, listen: tuple[str, int], what: str
) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve `app` on `listen`; the runner (to clean up) and the bound address (port 0 resolved).

    A taken port fails with "<what> cannot listen on HOST:PORT: <errno text>"."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen[0], listen[1]).start()
    except OSError as exc:
        await runner.cleanup()
        # asyncio wraps the errno in a long sentence; the errno's own text says it all.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SupervisorError(f"{what} cannot listen on {format_address(listen)}: {why}") from exc
    host, port = runner.addresses[0][:2]
    return runner, (str(host), int(port))
