"""From a parsed client request to the bytes sent upstream: checks, routing, header rewrite.

Hop-by-hop headers were already dropped by the parser callbacks (downstream.py); here the
request is validated (framing, Host, size), routed, and its head assembled once, so a retry on
another backend resends the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from . import framing, headers
from .errors import BadRequest

if TYPE_CHECKING:
    from .downstream import ClientConnection
    from .exchange import Exchange


def prepare(client: ClientConnection, ex: Exchange) -> None:
    """Validate a parsed request, route it and build its upstream head; raises ProxyError."""
    ctx = client.ctx
    method = ex.method
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported by this reverse proxy", 405)
    ex.idempotent = method in headers.IDEMPOTENT
    ex.replay = [] if ex.idempotent else None
    body = framing.request_body(ex.content_length, ex.transfer_encoding, ctx.max_body)
    ex.chunked_in = body == framing.CHUNKED
    target = ex.target
    if target[:1] != b"/":
        target = origin_form(ex, target)
    path, _, _ = target.partition(b"?")
    host = ex.host
    if host is None and not ex.http10:
        raise BadRequest("missing Host header")
    route = ctx.router.lookup(host, path)
    if route is None:
        raise no_route(host, path)
    ex.route = route
    lines = ex.lines
    if ex.connection is not None:
        named = headers.connection_tokens(ex.connection) - {b"close", b"keep-alive", b"upgrade"}
        if named:
            lines = headers.strip_named(lines, named)
    if host is None:
        lines.append(b"Host: " + client.local_host + b"\r\n")
    framing_lines = framing.request_framing(body, ex.content_length, ex.upgrade, ex.upgrade_value)
    ex.head = b"".join(
        (
            method,
            b" ",
            route.rewrite(target),
            b" HTTP/1.1\r\n",
            *lines,
            client.forwarded(ex, host),
            framing_lines,
            b"\r\n",
        )
    )


def prepare_simple(
    client: ClientConnection, ex: Exchange, method: bytes, target: bytes, block: bytes, host: bytes
) -> None:
    """Fill `ex` from a fast-path request: the header block is forwarded as received."""
    ex.method = method
    ex.target = target
    ex.host = host
    ex.lines = [block]
    ex.req_done = True
    ex.idempotent = method in headers.IDEMPOTENT
    ex.replay = [] if ex.idempotent else None
    path, _, _ = target.partition(b"?")
    route = client.ctx.router.lookup(host, path)
    if route is None:
        ex.error = no_route(host, path)
        ex.keep_alive = False
    else:
        ex.route = route
        ex.head = b"".join(
            (
                method,
                b" ",
                route.rewrite(target),
                b" HTTP/1.1\r\n",
                block,
                client.forwarded(ex, host),
                b"\r\n",
            )
        )


def origin_form(ex: Exchange, target: bytes) -> bytes:
    """Origin-form (`/path?query`) of an absolute-form or asterisk-form target."""
    if target == b"*" and ex.method == b"OPTIONS":
        return target
    if b"://" not in target:
        raise BadRequest("malformed request target")
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError as exc:
        raise BadRequest("malformed request target") from exc
    # RFC 9112 3.2.2: the authority in an absolute-form target replaces Host.
    if url.host:
        authority = url.host + (b":%d" % url.port if url.port else b"")
        if ex.host is not None:
            ex.lines = [
                b"Host: " + authority + b"\r\n" if line[:5].lower() == b"host:" else line
                for line in ex.lines
            ]
        else:
            ex.lines.append(b"Host: " + authority + b"\r\n")
        ex.host = authority
    origin = url.path or b"/"
    return origin + b"?" + url.query if url.query else origin


def no_route(host: bytes | None, path: bytes) -> BadRequest:
    """The 404 for a request no route matches."""
    return BadRequest(
        f"no route for host {(host or b'').decode('latin-1')!r} path {path.decode('latin-1')!r}",
        404,
    )
