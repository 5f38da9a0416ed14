"""Message framing decisions as pure functions of what a head said (RFC 9112 §6).

How a request body is delimited and what the upstream head says about it; how a response is
re-framed for the client and whether its connection may be reused. The request checks
(request.py) and the response relay (relay.py) act on these answers; tests call them directly.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import BadRequest

# How a request body is delimited.
NONE, LENGTH, CHUNKED = range(3)

# How a response body reaches the client.
NO_BODY, PASS, CHUNK, UNTIL_CLOSE = range(4)

# Builds a NamedTuple without its Python-level __new__ (a third of the cost, once per response).
_new = tuple.__new__


def request_body(
    content_length: bytes | None, transfer_encoding: bytes | None, max_body: int
) -> int:
    """NONE, LENGTH or CHUNKED for a request head; raises BadRequest (413, 501).

    The parser has already refused both headers at once, a duplicate or malformed
    Content-Length and malformed chunking (400), so only what it accepts is decided here.
    """
    if transfer_encoding is not None:
        if transfer_encoding.strip().lower() != b"chunked":
            shown = transfer_encoding.decode("latin-1")
            raise BadRequest(f"unsupported Transfer-Encoding {shown!r}", 501)
        return CHUNKED
    if content_length is not None:
        if max_body and int(content_length) > max_body:
            raise BadRequest(f"body larger than {max_body} bytes", 413)
        return LENGTH
    return NONE


def has_content(body: int, content_length: bytes | None) -> bool:
    """Whether a request with this framing carries at least one body byte (or may)."""
    if body == LENGTH:
        return content_length is not None and int(content_length) > 0
    return body == CHUNKED


def request_framing(
    body: int, content_length: bytes | None, upgrade: bool, upgrade_value: bytes | None
) -> bytes:
    """The framing lines of the upstream request head (the client's own were not copied)."""
    if body == CHUNKED:
        lines = b"Transfer-Encoding: chunked\r\n"
    elif body == LENGTH and content_length is not None:
        lines = b"Content-Length: " + content_length.strip() + b"\r\n"
    else:
        lines = b""
    if upgrade:
        lines += b"Connection: Upgrade\r\nUpgrade: " + (upgrade_value or b"") + b"\r\n"
    return lines


class ResponseFraming(NamedTuple):
    """How one response goes to the client."""

    mode: int  # NO_BODY | PASS | CHUNK | UNTIL_CLOSE
    lines: bytes  # framing and Connection lines to append to the relayed head
    close: bool  # the client connection closes after this response


def response_framing(
    status: int,
    *,
    head_request: bool,
    http10: bool,
    has_length: bool,
    transfer_encoding: bytes | None,
    chunked: bool,
    upgrade_requested: bool,
    upgrade_value: bytes | None,
    must_close: bool,
) -> ResponseFraming:
    """Re-frame a final response head (RFC 9112 §6.3) for the client.

    `has_length`: the backend sent Content-Length (passed on as is); `chunked`: its
    Transfer-Encoding ends in chunked. `must_close`: the client connection cannot be kept
    (the client asked, its request is still arriving, or the proxy is closing it).
    """
    close = must_close
    lines = b""
    if status == 101:
        mode = NO_BODY
        lines = b"Connection: Upgrade\r\nUpgrade: " + (upgrade_value or b"") + b"\r\n"
        close = False
    elif head_request or status == 204 or status == 304:
        mode = NO_BODY
        if transfer_encoding is not None and not http10:
            lines = b"Transfer-Encoding: " + transfer_encoding + b"\r\n"
    elif has_length:
        mode = PASS
    elif http10:
        mode = UNTIL_CLOSE
        close = True
    else:
        mode = CHUNK
        te = transfer_encoding
        if te is None or not chunked:
            # Delimited by close upstream (or another coding only): chunked for the client.
            te = b"chunked" if te is None else te + b", chunked"
        lines = b"Transfer-Encoding: " + te + b"\r\n"
    if upgrade_requested and status != 101:
        close = True  # the client may already be speaking the new protocol
    if http10:
        lines += b"" if close else b"Connection: keep-alive\r\n"
    elif close:
        lines += b"Connection: close\r\n"
    return _new(ResponseFraming, (mode, lines, close))


def reusable_after_head(
    head_request: bool, has_length: bool, transfer_encoding: bytes | None
) -> bool:
    """Whether a bodiless response left the backend connection at a message boundary.

    llhttp cannot be told a request was HEAD: a HEAD response with neither Content-Length nor
    Transfer-Encoding reads, to it, as a body delimited by close.
    """
    return not head_request or has_length or transfer_encoding is not None


def closed_body_complete(mode: int, chunked_upstream: bool) -> bool:
    """Whether the backend closing the connection mid-body ended the body (close-delimited)."""
    return mode in (CHUNK, UNTIL_CLOSE) and not chunked_upstream
