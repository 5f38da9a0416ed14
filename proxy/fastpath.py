"""Shortcuts for the most common messages: one read holding a whole simple message.

A bodiless request whose head contains only end-to-end headers (plus Host), and a response
with one Content-Length whose body arrived in the same read, are recognised with a couple of
compiled regular expressions instead of a parser callback per header; the head is forwarded as
received. Anything else (bodies, chunking, hop-by-hop headers, odd syntax, partial reads)
returns None and takes the httptools path. The request pattern is strict (RFC 9110 token
names, visible-ASCII target, no obs-fold, CRLF only), so a request the shortcut accepts is one
httptools would also accept, with the same (empty) body.
"""

from __future__ import annotations

import re

_FIELD = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n"

_REQUEST = re.compile(rb"([A-Z]{3,7}) (/[\x21-\x7e]*) HTTP/1\.1\r\n((?:" + _FIELD + rb")*)\r\n")
# Header names the proxy must see (framing, hop-by-hop, forwarding); found after a newline.
_REQUEST_SPECIAL = re.compile(
    rb"\n(host|content-length|transfer-encoding|connection|upgrade|expect|keep-alive|te|trailer"
    rb"|proxy-[a-z-]*|x-forwarded-[a-z-]*|forwarded)[ \t]*:[ \t]*([^\r]*)"
)
# A line starting with whitespace (obs-fold) is reported too: it sends us the slow way.
_RESPONSE_SPECIAL = re.compile(
    rb"\n(?:([ \t])|(content-length|transfer-encoding|connection|upgrade|keep-alive|te|trailer"
    rb"|proxy-[a-z-]*)[ \t]*:)[ \t]*([^\r]*)"
)


def simple_request(data: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """(method, target, header block, host) when `data` is exactly one simple request."""
    m = _REQUEST.fullmatch(data)
    if m is None:
        return None
    method, target, block = m.groups()
    if method == b"CONNECT":
        return None
    low = data.lower()
    special = _REQUEST_SPECIAL.findall(low)
    if len(special) != 1 or special[0][0] != b"host":
        return None
    # The value as sent (the lower-cased copy only located it).
    start = low.find(b"\nhost:") + 6
    host = data[start : data.find(b"\r", start)].strip(b" \t")
    return method, target, block, host


def simple_response(data: bytes) -> tuple[int, int] | None:
    """(status, head length) when `data` is exactly one response with a Content-Length body.

    The backend is trusted to speak HTTP, so only framing is checked here: one Content-Length
    matching the bytes present, no hop-by-hop headers, no folded lines.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[: end + 2].lower()
    special = _RESPONSE_SPECIAL.findall(head)
    if len(special) != 1:
        return None
    fold, name, value = special[0]
    code = head[9:12]
    if fold or name != b"content-length" or not head.startswith(b"http/1.1 ") or not code.isdigit():
        return None
    status = int(code)
    if status < 200 or status == 204 or status == 304 or head[12:13] not in (b" ", b"\r"):
        return None
    value = value.rstrip(b" \t")
    if not value.isdigit() or len(data) != end + 4 + int(value):
        return None
    return status, end + 4
