"""Backend for bench/chaos.sh and bench/soak.sh on $PORT: stdlib asyncio, HTTP/1.1 keep-alive.

/          a short body
/slow      the same after 100 ms (so requests are in flight when an instance is killed)
/big       1 MiB in 64 KiB pieces 2 ms apart (a kill can cut it mid-body)
/healthz   200
Every response names the instance in `X-Instance`. Stdlib only: 100 of them start fast and
stay small (the soak runs 100).
"""

from __future__ import annotations

import asyncio
import os

NAME = f"{os.environ.get('CORRAL_SERVICE', 'web')}.{os.environ.get('CORRAL_INSTANCE', '?')}"
BODY = f"ok from {NAME}\n".encode()
CHUNK = b"x" * 65536
BIG_CHUNKS = 16


def head(length: int) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n"
        f"X-Instance: {NAME}\r\n\r\n"
    ).encode()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            line = request.split(b"\r\n", 1)[0].split(b" ")
            path = line[1].decode(errors="replace") if len(line) > 1 else "/"
            if path == "/slow":
                await asyncio.sleep(0.1)
            if path == "/big":
                writer.write(head(len(CHUNK) * BIG_CHUNKS))
                for _ in range(BIG_CHUNKS):
                    writer.write(CHUNK)
                    await writer.drain()
                    await asyncio.sleep(0.002)
            else:
                body = b"ok\n" if path == "/healthz" else BODY
                writer.write(head(len(body)) + body)
                await writer.drain()
            if b"connection: close" in request.lower():
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
