"""Run Corral's proxy standalone for bench/proxy.sh: `proxy_corral.py LISTEN_PORT BACKEND_PORT...`."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.standalone import run_standalone


async def main() -> None:
    listen_port, *backend_ports = (int(a) for a in sys.argv[1:])
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    await run_standalone(
        [("127.0.0.1", listen_port)],
        [("127.0.0.1", p) for p in backend_ports],
        shutdown=shutdown,
        grace=1.0,
    )


if __name__ == "__main__":
    uvloop.run(main())
