"""The small aiohttp app of bench/coldstart.sh: GET / answers "ok"; /sleep?ms=N after N ms."""

import asyncio
import os

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("ms", "100")) / 1000)
    return web.Response(text=f"slept {os.getpid()}")


app = web.Application()
app.add_routes([web.get("/", hello), web.get("/sleep", sleep)])
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)
