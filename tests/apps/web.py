"""A tiny HTTP server for tests (stdlib only, starts fast).

Answers every path with JSON naming the instance; /healthz is 200 unless a file named
`unhealthy` (or `unhealthy.<index>`) exists in the working directory.
Env: CRASH_INSTANCE=N makes instance N exit 3 at once; SPAWN_CHILD=1 forks a grandchild that
sleeps forever (and ignores SIGTERM) to test tree killing; IGNORE_TERM=1 ignores SIGTERM.
`/sleep/MS` answers after MS milliseconds (a request under way).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys

PORT = int(os.environ["PORT"])
INDEX = os.environ.get("CORRAL_INSTANCE", "?")
NAME = f"{os.environ.get('CORRAL_SERVICE', 'web')}.{INDEX}"

if os.environ.get("CRASH_INSTANCE") == INDEX:
    print(f"{NAME} crashing on purpose", flush=True)
    sys.exit(3)
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("SPAWN_CHILD"):
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    child = subprocess.Popen([sys.executable, "-c", code])
    print(f"grandchild {child.pid}", flush=True)


class Handler(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if path.startswith("/sleep/"):
                delay = int(path.removeprefix("/sleep/")) / 1000
                asyncio.get_running_loop().call_later(delay, self.respond, path)
                continue
            self.respond(path)
            if b"HTTP/1.0" in head.split(b"\r\n", 1)[0] or b"connection: close" in head.lower():
                self.transport.close()  # type: ignore[attr-defined]
                return

    def respond(self, path: str) -> None:
        status = "200 OK"
        if path == "/healthz":
            if os.path.exists("unhealthy") or os.path.exists(f"unhealthy.{INDEX}"):
                status = "503 Service Unavailable"
            body = status.encode()
        else:
            body = json.dumps(
                {"instance": NAME, "port": PORT, "pid": os.getpid(), "path": path}
            ).encode()
        self.transport.write(  # type: ignore[attr-defined]
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n".encode()
            + body
        )


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, "127.0.0.1", PORT)
    print(f"{NAME} listening on {PORT}", flush=True)
    stop = asyncio.Event()
    if not os.environ.get("IGNORE_TERM"):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    print(f"{NAME} stopped", flush=True)


asyncio.run(main())
