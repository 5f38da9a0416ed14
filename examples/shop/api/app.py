"""The shop's web API: one instance per port, told its port and index by Corral."""

import os
import socket
import sqlite3

from aiohttp import web

PORT = int(os.environ["PORT"])
# Corral runs instances on 127.0.0.1; promoted containers set HOST=0.0.0.0 to be reachable.
HOST = os.environ.get("HOST", "127.0.0.1")
INSTANCE = f"{os.environ.get('CORRAL_SERVICE', 'api')}.{os.environ.get('CORRAL_INSTANCE', '?')}"
DB = os.environ.get("SHOP_DB", "shop.db")


async def index(request: web.Request) -> web.Response:
    return web.json_response(
        {"service": "shop-api", "instance": INSTANCE, "host": socket.gethostname(), "port": PORT}
    )


async def items(request: web.Request) -> web.Response:
    with sqlite3.connect(DB) as conn:
        rows = conn.execute("SELECT id, name, price FROM items ORDER BY id").fetchall()
    return web.json_response(
        {"instance": INSTANCE, "items": [{"id": i, "name": n, "price": p} for i, n, p in rows]}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


app = web.Application()
app.add_routes([web.get("/", index), web.get("/items", items), web.get("/healthz", healthz)])

if __name__ == "__main__":
    print(f"{INSTANCE} listening on {HOST}:{PORT}", flush=True)
    web.run_app(app, host=HOST, port=PORT, print=None, access_log=None)
