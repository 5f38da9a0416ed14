"""A tiny aiohttp + uvloop backend for bench/proxy.sh: `python proxy_backend.py PORT`."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

BODY = b"hello from the backend\n"


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


def main() -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
