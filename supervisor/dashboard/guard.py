"""Who may use the dashboard: the token on TCP, and no cross-site or rebound browser requests.

The token travels in an `Authorization: Bearer` header, never in a cookie: a page on another
site can make the browser send cookies, but not headers, so there is no CSRF to defend against
on top. Browsers reaching the control socket through `ssh -L` send no token (the socket's uid
check is the lock); there the Host and Origin checks stop other sites' pages from using the
forwarded port, which a simple cross-site POST or a DNS rebinding would otherwise do.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_PREFIX = "/v1/"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
NO_TOKEN = (
    "this dashboard needs its token: open the URL printed by `corral dashboard --url` "
    "(or send it as 'Authorization: Bearer TOKEN')"
)


def _refuse(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def _is_loopback_name(host: str) -> bool:
    """An IP literal or `localhost`: names a DNS rebinding cannot point elsewhere."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
    if name in ("localhost", "corral"):  # "corral": the CLI's and the docs' curl host name
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def browser_guard(*, check_host: bool) -> Middleware:
    """Refuse cross-site API requests, and (`check_host`) browser requests to DNS names."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        from_browser = "Origin" in request.headers or "Sec-Fetch-Site" in request.headers
        if not from_browser:
            return await handler(request)  # the CLI, curl, scripts
        if check_host and not _is_loopback_name(request.host):
            return _refuse(
                403,
                f"refusing host {request.host!r}: open the dashboard as http://localhost:PORT/ "
                "(other names could be a DNS rebinding)",
            )
        if request.path.startswith(API_PREFIX):
            origin = request.headers.get("Origin")
            site = request.headers.get("Sec-Fetch-Site", "same-origin")
            cross = site not in ("same-origin", "none")
            if origin is not None and request.method not in _SAFE:
                cross = cross or origin != f"{request.scheme}://{request.host}"
            if cross:
                return _refuse(403, "cross-site requests to the control API are refused")
        return await handler(request)

    return guard


def token_guard(token: Callable[[], str]) -> Middleware:
    """Every /v1 request must carry the current token; the page's static files need none."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX) or request.path == API_PREFIX.rstrip("/"):
            scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
            expected = token()
            if (
                not expected
                or scheme.lower() != "bearer"
                or not hmac.compare_digest(supplied.strip().encode(), expected.encode())
            ):
                return _refuse(401, NO_TOKEN, **{"WWW-Authenticate": 'Bearer realm="corral"'})
        return await handler(request)

    return guard
