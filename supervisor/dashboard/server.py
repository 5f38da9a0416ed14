"""The dashboard's routes on the control socket, and its own TCP listener when configured."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from config.render import format_address

from ..errors import SupervisorError
from ..stats import StatsFeed
from ..tcpsite import MAX_BODY, TcpSite
from . import stream
from .guard import browser_guard, token_guard
from .token import TokenFile

if TYPE_CHECKING:
    from ..control import ControlServer

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The only files served: a fixed list, so no request path can reach anything else on disk.
ASSETS = {
    **{f"{name}.js": "text/javascript" for name in ("app", "api", "dom", "fleet", "logs")},
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_HEADERS = {
    # The page loads nothing from elsewhere, and nothing may load it in a frame.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a daemon upgrade must not leave yesterday's app.js running
}
_TOKEN_FILE = "dashboard.token"


class Dashboard:
    """Owns the stats feed, the page's routes, the TCP listener and its token."""

    def __init__(self, control: ControlServer) -> None:
        self.control = control
        self.daemon = control.daemon
        self.feed = StatsFeed(self.daemon)
        self.tokens = TokenFile(self.daemon.plan.daemon.state_dir / _TOKEN_FILE)
        self.address: tuple[str, int] | None = None  # bound TCP address (port 0 resolved)
        self.browser_guard = browser_guard(check_host=True)
        self.site: TcpSite | None = None

    # --- routes --------------------------------------------------------------------------------

    def _add_view_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/ui/{name}", self.asset)
        r.add_get("/v1/stats", self.stats)

    def add_routes(self, app: web.Application) -> None:
        """The page and /v1/stats on the control socket, plus the token endpoints (socket only)."""
        self._add_view_routes(app)
        app.router.add_get("/v1/dashboard", self.info)
        app.router.add_post("/v1/dashboard/token", self.rotate)

    def tcp_app(self) -> web.Application:
        """What the TCP listener serves: the page and the API calls the page makes, no more."""
        from ..control import map_errors

        app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[
                token_guard(lambda: self.tokens.token),
                browser_guard(check_host=False),
                map_errors,
            ],
        )
        self._add_view_routes(app)
        c = self.control
        r = app.router
        r.add_get("/v1/status", c.status)
        r.add_get("/v1/ps", c.ps)
        r.add_get("/v1/logs", c.logs)
        r.add_get("/v1/events", c.events)
        r.add_post("/v1/start", c.start_targets)
        r.add_post("/v1/stop", c.stop_targets)
        r.add_post("/v1/restart", c.restart)
        r.add_post("/v1/scale", c.scale)
        r.add_post("/v1/services/{name}/scale", c.scale_one)
        return app

    # --- the TCP listener ------------------------------------------------------------------------

    async def open(self) -> None:
        """Listen on `[dashboard] listen`, if set (the token is created on first use)."""
        listen = self.daemon.plan.dashboard.listen
        if listen is None:
            return
        try:
            self.tokens.load()
        except OSError as exc:
            raise SupervisorError(f"dashboard token {self.tokens.path}: {exc}") from exc
        site = TcpSite(self.tcp_app(), "dashboard")
        self.address = await site.open(listen, f"[dashboard] listen in {self.daemon.plan.path}")
        self.site = site
        log.info("dashboard on http://%s/", format_address(self.address))
        if not _is_loopback(self.address[0]):
            log.warning(
                "dashboard listens on %s: plain HTTP, so its token crosses the network in clear; "
                "an SSH tunnel to 127.0.0.1 is safer",
                format_address(self.address),
            )

    async def close(self) -> None:
        if self.site is not None:
            await self.site.close()
            self.site = None
            self.address = None

    def url(self) -> str | None:
        """The dashboard's URL with its token in the fragment (never sent to the server)."""
        if self.address is None:
            return None
        host, port = self.address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{format_address((host, port))}/#token={self.tokens.token}"

    # --- handlers --------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC / "index.html", headers={**_HEADERS, "Content-Type": "text/html; charset=utf-8"}
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound(text=f"no asset {name!r}")
        return web.FileResponse(STATIC / name, headers={**_HEADERS, "Content-Type": ASSETS[name]})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("follow", "0") not in ("1", "true", "yes"):
            return web.json_response(self.feed.snapshot())
        interval = _query_number(request, "interval", 1.0, stream.MIN_INTERVAL, stream.MAX_INTERVAL)
        events = int(_query_number(request, "events", 0, 0, 1000))
        # Under the daemon's task group; CPU% sampled every 2 s (not 10) while a view watches.
        async with self.daemon.stats_followed():
            work = stream.serve(request, self.feed, self.daemon.events, interval, events)
            return await self.daemon.stream(work, "stats -f")

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(self._describe())

    async def rotate(self, request: web.Request) -> web.Response:
        if self.address is None:
            raise SupervisorError(
                "the dashboard has no TCP listener, so no token: set [dashboard] listen"
            )
        self.tokens.rotate()
        log.info("dashboard token rotated (%s)", self.tokens.path)
        return web.json_response(self._describe())

    def _describe(self) -> dict[str, Any]:
        return {
            "listen": None if self.address is None else format_address(self.address),
            "url": self.url(),
            "token_file": str(self.tokens.path) if self.address is not None else None,
            "socket": str(self.control.path),
        }


def _query_number(
    request: web.Request, name: str, default: float, lowest: float, highest: float
) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not lowest <= value <= highest:  # also false for NaN
        raise SupervisorError(
            f"query parameter {name!r} must be a number from {lowest:g} to {highest:g}, got {raw!r}"
        )
    return value


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
