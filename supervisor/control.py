"""The control API: HTTP/JSON on a Unix socket (dir 0700, socket 0600, peer uid checked)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from config.daemon import tmp_socket_dir

from . import metrics
from .apibody import (
    check_query,
    count,
    counts,
    flag,
    query_flag,
    query_int,
    query_seconds,
    read_body,
    targets,
)
from .client import CONFIG_HEADER
from .dashboard import Dashboard
from .errors import OrderInterrupted, RollFailed, SupervisorError, TargetError
from .metrics import MetricsListener
from .privatedir import make_private_dir, make_shared_tmp_dir

if TYPE_CHECKING:
    from .view import DaemonControl

log = logging.getLogger(__name__)

API = "/v1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SERVER: web.AppKey[ControlServer] = web.AppKey("server")
_LIVENESS_CHECK = 1.0  # seconds between looks at a quiet follower's connection


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process on the other end of the Unix socket (SO_PEERCRED)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    # File modes already keep other users out; the uid check is the second lock on the door,
    # for sockets placed in shared directories or with modes loosened by hand.
    uid = peer_uid(request)
    if uid is None or (uid != os.getuid() and uid != 0):
        return _error(403, f"uid {uid} may not control this daemon")
    server: ControlServer = request.app[_SERVER]
    asked = request.headers.get(CONFIG_HEADER)
    if asked is not None:
        wanted = os.fsdecode(unquote_to_bytes(asked))
        serving = str(server.daemon.plan.path)
        if wanted != serving:
            # 421 Misdirected Request: right socket, wrong daemon for this config.
            return _error(421, f"the daemon on {server.path} serves {serving}, not {wanted}")
    return await handler(request)


@web.middleware
async def map_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Supervisor exceptions as JSON errors (shared with the dashboard's TCP listener)."""
    try:
        return await handler(request)
    except TargetError as exc:
        return _error(404, str(exc))
    except RollFailed as exc:
        return _error(409, str(exc))
    except SupervisorError as exc:
        return _error(400, str(exc))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ControlServer:
    """aiohttp embedded with AppRunner(handle_signals=False) on a UnixSite."""

    def __init__(self, daemon: DaemonControl, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self._runner: web.AppRunner | None = None
        self.followers = 0  # `logs -f` / `events -f` streams open right now
        self.dashboard = Dashboard(self)  # the web page, /v1/stats and the optional TCP listener
        self.metrics_listener = MetricsListener(daemon)  # [metrics] listen

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_guard, self.dashboard.browser_guard, map_errors])
        app[_SERVER] = self
        r = app.router
        r.add_get(f"{API}/status", self.status)
        r.add_get(f"{API}/ps", self.ps)
        r.add_post(f"{API}/start", self.start_targets)
        r.add_post(f"{API}/stop", self.stop_targets)
        r.add_post(f"{API}/restart", self.restart)
        r.add_post(f"{API}/scale", self.scale)
        r.add_post(f"{API}/services/{{name}}/scale", self.scale_one)
        r.add_get(f"{API}/logs", self.logs)
        r.add_get(f"{API}/events", self.events)
        r.add_post(f"{API}/reload", self.reload)
        r.add_post(f"{API}/shutdown", self.shutdown)
        r.add_get(f"{API}/wait", self.wait)
        r.add_get("/metrics", self.metrics)
        self.dashboard.add_routes(app)
        return app

    async def open(self) -> None:
        parent = self.path.parent
        if parent == tmp_socket_dir():
            make_shared_tmp_dir(parent)  # /tmp/corral-<uid>: refused unless really ours
        elif parent == self.daemon.plan.daemon.state_dir:
            make_private_dir(parent)  # already done by the state file's lock; cheap
        elif not parent.exists():
            make_private_dir(parent)
        # A directory the user chose that exists (/run/x, /tmp) is left as it is.
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise SupervisorError(f"{self.path} exists and is not a socket; not replacing it")
            if await _answers(self.path):
                # Our lock is per state dir: a live socket here is another config's daemon
                # (two projects with one `socket` setting). Never take it over.
                raise SupervisorError(
                    f"{self.path} is in use by another running corral daemon; "
                    "give this config its own [daemon] socket"
                )
            self.path.unlink()  # nobody listens: a dead daemon's
        # Before the socket answers: a taken dashboard port must fail `up -d` with its error,
        # not let it report a stack that is already shutting down.
        await self.dashboard.open()
        await self.metrics_listener.open()
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            await web.UnixSite(runner, str(self.path)).start()
        except BaseException:
            await runner.cleanup()
            raise
        finally:
            os.umask(old_umask)
        self._runner = runner  # from here on the socket file is ours (close removes it)
        log.info("control socket %s", self.path)

    async def close(self) -> None:
        await self.dashboard.close()
        await self.metrics_listener.close()
        if self._runner is None:
            return  # never opened: whatever is at the path is not ours to remove
        await self._runner.cleanup()
        self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # --- handlers --------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({**self.daemon.status(), "followers": self.followers})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response(self.daemon.ps())

    async def start_targets(self, request: web.Request) -> web.Response:
        data = await read_body(request, ("targets",))
        await self.daemon.start(targets(data))
        return web.json_response(self.daemon.ps())

    async def stop_targets(self, request: web.Request) -> web.Response:
        data = await read_body(request, ("targets",))
        await self.daemon.stop(targets(data))
        return web.json_response(self.daemon.ps())

    async def restart(self, request: web.Request) -> web.Response:
        data = await read_body(request, ("targets", "all_at_once"))
        rolling = not flag(data, "all_at_once")
        await self.daemon.restart(targets(data), rolling=rolling)
        return web.json_response(self.daemon.ps())

    async def scale(self, request: web.Request) -> web.Response:
        data = await read_body(request, ("counts", "save"))
        wanted, save = counts(data), flag(data, "save")
        await self.daemon.scale(wanted)
        if save:
            await self.daemon.save_counts(wanted)
        return web.json_response(self.daemon.ps())

    async def scale_one(self, request: web.Request) -> web.Response:
        data = await read_body(request, ("count",))
        if "count" not in data:
            raise SupervisorError("'count' is required")
        await self.daemon.scale({request.match_info["name"]: count(data["count"], "'count'")})
        return web.json_response(self.daemon.ps())

    async def logs(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ("target", "n", "follow"))
        wanted = self._log_targets(request.query.getall("target", []))
        n = query_int(request, "n", 100)
        follower = self.daemon.logs.follow(wanted) if query_flag(request, "follow") else None
        # tail() and follow() without an await between: no line is lost or shown twice.
        history = [record.to_json() for record in self.daemon.logs.tail(wanted, n)]
        if follower is None:
            return await _stream(request, history, None)
        self.followers += 1
        try:
            return await _stream(
                request, history, (r.to_json() async for r in follower), self.daemon
            )
        finally:
            follower.close()
            self.followers -= 1

    def _log_targets(self, raw: list[str]) -> list[tuple[str, int | None]] | None:
        if not raw:
            return None
        out: list[tuple[str, int | None]] = []
        for target in raw:
            name, _, index = target.partition(".")
            if name not in self.daemon.service_names():
                raise TargetError(f"no service {name!r}")
            if index and not (index.isascii() and index.isdigit()):
                raise SupervisorError(f"bad instance {target!r}: expected service or service.N")
            out.append((name, int(index) if index else None))
        return out

    async def events(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ("n", "follow"))
        follow = query_flag(request, "follow")
        n = query_int(request, "n", 50)
        history = [event.to_json() for event in self.daemon.events.recent(n)]
        if not follow:
            return await _stream(request, history, None)
        self.followers += 1
        try:
            async with contextlib.aclosing(self.daemon.events.follow()) as events:
                return await _stream(
                    request, history, (e.to_json() async for e in events), self.daemon
                )
        finally:
            self.followers -= 1

    async def reload(self, request: web.Request) -> web.Response:
        await read_body(request, ())
        return web.json_response(await self.daemon.reload())

    async def shutdown(self, request: web.Request) -> web.Response:
        await read_body(request, ())
        self.daemon.request_shutdown()
        return web.json_response({"stopping": True, "pid": os.getpid()})

    async def wait(self, request: web.Request) -> web.Response:
        check_query(request, ("timeout",))
        timeout = query_seconds(request, "timeout", 120.0)
        return web.json_response(await self.daemon.wait_settled(timeout))

    async def metrics(self, request: web.Request) -> web.Response:
        return await metrics.handle(request, self.daemon)


async def _stream(
    request: web.Request,
    history: list[dict[str, Any]],
    live: AsyncIterator[dict[str, Any]] | None,
    daemon: DaemonControl | None = None,
) -> web.StreamResponse:
    """NDJSON: `history`, then `live` until it ends or the reader goes away."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        for obj in history:
            await response.write(_line(obj))
        if live is not None and daemon is not None:
            # Under the daemon's task group, so that shutdown owns and ends it.
            await daemon.stream(_follow(request, response, live), "follow")
        await response.write_eof()
    except (ConnectionError, OrderInterrupted):
        pass  # the reader left (Ctrl-C on `corral logs -f`), or the daemon is stopping
    return response


async def _follow(
    request: web.Request, response: web.StreamResponse, live: AsyncIterator[dict[str, Any]]
) -> None:
    async def pump() -> None:
        with contextlib.suppress(ConnectionError):  # the reader left: the stream is over
            async for obj in live:
                await response.write(_line(obj))

    async def reader_left() -> None:
        # A write notices a reader that left; on a quiet stream nothing is written, so look
        # at the connection now and then, or every Ctrl-C would leave a follower behind.
        while True:
            await asyncio.sleep(_LIVENESS_CHECK)
            transport = request.transport
            if transport is None or transport.is_closing():
                return

    async with asyncio.TaskGroup() as both:  # scoped to this one stream
        tasks = {both.create_task(pump()), both.create_task(reader_left())}
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()


async def _answers(path: Path) -> bool:
    """Is something listening on the Unix socket at `path`?"""
    try:
        async with asyncio.timeout(2):
            _reader, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (OSError, TimeoutError):
        return True  # a listener too busy to accept is still a listener
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()
