"""An HTTP server for the autoscaling tests (stdlib only).

GET /slow?ms=N answers after N ms; every answer is JSON with the instance, its pid and how
many requests this process had under way when the request arrived (`concurrent`, counting
itself), so a test can see whether two requests ever shared an instance, and `seq`, the how-manyth
request (health checks aside) this process got. /healthz is 200.
Env: START_DELAY=seconds before listening (a slow cold start); NEVER_READY=1 never listens;
CRASH_AFTER=N exits 1 a moment (0.2 s) after answering its Nth request: a crash with no
request under way.
"""

import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

PORT = int(os.environ["PORT"])
NAME = f"{os.environ.get('CORRAL_SERVICE', 'fn')}.{os.environ.get('CORRAL_INSTANCE', '?')}"
CRASH_AFTER = int(os.environ.get("CRASH_AFTER", "0"))
STARTED = time.time()
under_way = 0
answered = 0
arrived = 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global under_way, answered, arrived
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            url = urlsplit(target)
            under_way += 1
            concurrent = under_way
            if url.path != "/healthz":
                arrived += 1
            seq = arrived
            try:
                if url.path == "/slow":
                    ms = float(parse_qs(url.query).get("ms", ["100"])[0])
                    await asyncio.sleep(ms / 1000)
            finally:
                under_way -= 1
            body = json.dumps(
                {
                    "instance": NAME,
                    "pid": os.getpid(),
                    "path": url.path,
                    "concurrent": concurrent,
                    "seq": seq,
                    "up_s": round(time.time() - STARTED, 3),
                }
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            if url.path != "/healthz":
                answered += 1
                if CRASH_AFTER and answered >= CRASH_AFTER:
                    print(f"{NAME} crashing after {answered} requests", flush=True)
                    asyncio.get_running_loop().call_later(0.2, os._exit, 1)
            if b"HTTP/1.0" in head.split(b"\r\n", 1)[0] or b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    delay = float(os.environ.get("START_DELAY", "0"))
    if delay:
        await asyncio.sleep(delay)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if os.environ.get("NEVER_READY"):
        print(f"{NAME} will never listen", flush=True)
        await stop.wait()
        return
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    print(f"{NAME} listening on {PORT}", flush=True)
    async with server:
        await stop.wait()
    print(f"{NAME} stopped", flush=True)
    sys.exit(0)


asyncio.run(main())
