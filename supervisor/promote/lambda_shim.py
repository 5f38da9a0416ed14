"""The Lambda handler `corral promote lambda` ships (as corral_lambda.py) beside a service's app.

$CORRAL_APP names the app ("module:attr"). An ASGI app goes through Mangum, with its lifespan
started once per execution environment: Mangum itself runs startup and shutdown around every
invocation (mangum#342), which reopens pools and reloads models on each request. A WSGI app
goes through apig-wsgi. $CORRAL_BASE_PATH is a route prefix to strip (strip_prefix = true).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import inspect
import os
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def load_app(path: str) -> Any:
    """The object `path` ("module:attr.inner") names."""
    module, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def is_asgi(app: Any) -> bool:
    """ASGI apps are coroutine functions (or objects whose __call__ is one); WSGI apps are not."""
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else type(app).__call__
    return inspect.iscoroutinefunction(call)


def make_handler(path: str, base_path: str = "/") -> Handler:
    """The handler for the app at `path`, set up once (this runs at cold start)."""
    app = load_app(path)
    if is_asgi(app):
        return _asgi(app, base_path)
    if callable(app):
        return _wsgi(app, base_path)
    raise TypeError(f"{path} is neither an ASGI nor a WSGI application: {app!r}")


def _asgi(app: Any, base_path: str) -> Handler:
    from mangum import Mangum
    from mangum.protocols.lifespan import LifespanCycle

    # One loop for the life of the execution environment: the lifespan task started here keeps
    # running on it between invocations, which Mangum drive on the same loop.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    lifespan = LifespanCycle(app, "auto")
    lifespan.__enter__()
    state = lifespan.lifespan_state

    def shutdown(*_: object) -> None:
        if not loop.is_closed():
            lifespan.__exit__(None, None, None)
            loop.close()

    # Lambda sends SIGTERM before it freezes an environment for good (when extensions are
    # registered); otherwise the process just ends and atexit is the last chance.
    atexit.register(shutdown)

    def terminate(*_: object) -> None:
        shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, terminate)

    async def with_state(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["state"] = dict(state)
        await app(scope, receive, send)

    adapter = Mangum(with_state, lifespan="off", api_gateway_base_path=base_path)
    return lambda event, context: dict(adapter(event, context))


def _wsgi(app: Any, base_path: str) -> Handler:
    from apig_wsgi import make_lambda_handler

    wrapped: Handler = make_lambda_handler(app, binary_support=True)
    prefix = base_path.rstrip("/")
    if not prefix:
        return wrapped

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        path = event.get("rawPath", "")
        if path == prefix or path.startswith(prefix + "/"):
            event = {**event, "rawPath": path[len(prefix) :] or "/"}
        return wrapped(event, context)

    return handler


if os.environ.get("CORRAL_APP"):
    handler = make_handler(os.environ["CORRAL_APP"], os.environ.get("CORRAL_BASE_PATH", "/"))
