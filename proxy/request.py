"""From a parsed client request to the head sent upstream: checks, routing, header rewrite.

The parser callbacks (downstream.py) collect a `RequestFields`, dropping hop-by-hop headers as
they go; `prepare` validates it, routes it and builds the upstream head once, as an immutable
`RequestHead`, so a retry on another backend resends the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import httptools

from . import framing, headers
from .errors import BadRequest
from .router import Route, Router

# Builds a NamedTuple without its Python-level __new__ (a third of the cost, once per request).
_new = tuple.__new__

# Connection tokens that name no header to strip, or one that must stay.
_NOT_NAMED = frozenset({b"close", b"keep-alive", b"upgrade"}) | headers.KEEP_REQUEST

# Builds the X-Forwarded-* / Forwarded lines for a request (per connection, see downstream.py).
Forwarded = Callable[["RequestFields | None", bytes | None], bytes]


class RequestFields:
    """What the parser callbacks collect from one request head; class attributes are defaults."""

    method = b""
    target = b""
    http10 = False
    keep_alive = True
    upgrade = False
    host: bytes | None = None
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    connection: bytes | None = None
    upgrade_value: bytes | None = None
    xff: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    forwarded: bytes | None = None

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # end-to-end header lines, as received


class RequestHead(NamedTuple):
    """One request as it is forwarded: checked, routed, its upstream head built.

    A NamedTuple: immutable, and built in a fraction of a frozen dataclass's time, which
    matters once per request.
    """

    method: bytes
    target: bytes  # as the client sent it (logs)
    http10: bool
    keep_alive: bool  # the client wants its connection kept
    upgrade: bool  # the client asked for a protocol upgrade
    idempotent: bool  # safe to resend (RFC 9110 §9.2.2)
    body: int  # framing.NONE | LENGTH | CHUNKED
    route: Route | None  # None for a request the proxy answers itself
    lines: Sequence[bytes]  # the client's end-to-end header lines (hash keys are read here)
    data: bytes  # the head sent upstream

    @classmethod
    def rejected(cls, fields: RequestFields | None = None) -> RequestHead:
        """The head of a request answered by the proxy itself (never forwarded)."""
        if fields is None:
            return cls(b"", b"", False, False, False, False, framing.NONE, None, (), b"")
        return cls(
            fields.method,
            fields.target,
            fields.http10,
            False,
            fields.upgrade,
            False,
            framing.NONE,
            None,
            (),
            b"",
        )


def prepare(
    fields: RequestFields,
    *,
    router: Router,
    max_body: int,
    local_host: bytes,
    forwarded: Forwarded,
) -> RequestHead:
    """Validate a parsed request, route it and build its upstream head; raises BadRequest."""
    method = fields.method
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported by this reverse proxy", 405)
    body = framing.request_body(fields.content_length, fields.transfer_encoding, max_body)
    if fields.upgrade and framing.has_content(body, fields.content_length):
        # The parser stops at an upgrade request's head: what follows is held until the
        # backend answers (see Exchange.early_data), so a body could not be told apart from
        # the new protocol's first bytes.
        raise BadRequest("an upgrade request cannot carry a body")
    target = fields.target
    if target[:1] != b"/":
        target = origin_form(fields, target)
    path, _, _ = target.partition(b"?")
    host = fields.host
    if host is None and not fields.http10:
        raise BadRequest("missing Host header")
    route = router.lookup(host, path)
    if route is None:
        raise no_route(host, path)
    lines = fields.lines
    if fields.connection is not None:
        named = headers.connection_tokens(fields.connection) - _NOT_NAMED
        if named:
            lines = headers.strip_named(lines, named)
    if host is None:
        lines.append(b"Host: " + local_host + b"\r\n")
    framing_lines = framing.request_framing(
        body, fields.content_length, fields.upgrade, fields.upgrade_value
    )
    data = b"".join(
        (
            method,
            b" ",
            route.rewrite(target),
            b" HTTP/1.1\r\n",
            *lines,
            forwarded(fields, host),
            framing_lines,
            b"\r\n",
        )
    )
    return _new(
        RequestHead,
        (
            method,
            fields.target,
            fields.http10,
            fields.keep_alive,
            fields.upgrade,
            method in headers.IDEMPOTENT,
            body,
            route,
            lines,
            data,
        ),
    )


def prepare_simple(
    method: bytes, target: bytes, block: bytes, host: bytes, route: Route, forwarded: bytes
) -> RequestHead:
    """The head of a fast-path request (fastpath.simple_request): its block is sent as received."""
    data = b"".join(
        (method, b" ", route.rewrite(target), b" HTTP/1.1\r\n", block, forwarded, b"\r\n")
    )
    idempotent = method in headers.IDEMPOTENT
    return _new(
        RequestHead,
        (method, target, False, True, False, idempotent, framing.NONE, route, (block,), data),
    )


def origin_form(fields: RequestFields, target: bytes) -> bytes:
    """Origin-form (`/path?query`) of an absolute-form or asterisk-form target."""
    if target == b"*" and fields.method == b"OPTIONS":
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
        if fields.host is not None:
            fields.lines = [
                b"Host: " + authority + b"\r\n" if line[:5].lower() == b"host:" else line
                for line in fields.lines
            ]
        else:
            fields.lines.append(b"Host: " + authority + b"\r\n")
        fields.host = authority
    origin = url.path or b"/"
    return origin + b"?" + url.query if url.query else origin


def no_route(host: bytes | None, path: bytes) -> BadRequest:
    """The 404 for a request no route matches."""
    return BadRequest(
        f"no route for host {(host or b'').decode('latin-1')!r} path {path.decode('latin-1')!r}",
        404,
    )
