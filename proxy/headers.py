"""Header rules: hop-by-hop stripping and X-Forwarded-* / Forwarded (RFC 7239).

The per-header work happens in the protocol callbacks (one dict lookup per header); this module
holds the tables they consult and the builders for the rarer or per-connection parts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Request headers the proxy consumes or regenerates; codes tell the parser callback what to do.
KEEP, HOST, CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, UPGRADE, EXPECT = range(7)
DROP, XFF, XFP, XFH, FORWARDED = range(7, 12)

REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"upgrade": UPGRADE,
    b"expect": EXPECT,
    # Hop-by-hop (RFC 9110 7.6.1 and the RFC 2616 list): meant for this hop only.
    b"keep-alive": DROP,
    b"proxy-connection": DROP,
    b"te": DROP,
    b"trailer": DROP,
    # Proxy-Authorization is not dropped: only a proxy that asked for credentials consumes
    # them (RFC 9110 §11.7.2) and this one never asks; nginx forwards it too.
    b"proxy-authenticate": DROP,
    b"x-forwarded-for": XFF,
    b"x-forwarded-proto": XFP,
    b"x-forwarded-host": XFH,
    b"forwarded": FORWARDED,
}

# Response headers: content-length and transfer-encoding are re-derived, the rest are dropped.
RESPONSE_SPECIAL: dict[bytes, int] = {
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"upgrade": UPGRADE,
    b"keep-alive": DROP,
    b"proxy-connection": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"proxy-authenticate": DROP,
    b"proxy-authorization": DROP,
}

# What a Connection header may not declare hop-by-hop: Host is end-to-end by definition (and
# what the request was routed by), a response's Content-Length is its framing.
KEEP_REQUEST = frozenset({b"host"})
KEEP_RESPONSE = frozenset({b"content-length"})

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(code: int, reason: bytes) -> bytes:
    """`HTTP/1.1 <code> <reason>` with CRLF, cached (a backend uses a handful of them)."""
    line = _STATUS_LINES.get((code, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (code, reason)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[(code, reason)] = line
    return line


def connection_tokens(value: bytes) -> set[bytes]:
    """Lower-cased tokens of a Connection header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def strip_named(lines: Sequence[bytes], names: Iterable[bytes]) -> list[bytes]:
    """Drop header lines named in `names` (those a Connection header declared hop-by-hop)."""
    drop = set(names)
    return [line for line in lines if line.split(b":", 1)[0].strip().lower() not in drop]


def _fields(lines: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    # `lines` are header lines, or (fast path) one block of CRLF-terminated lines.
    out = []
    for line in b"".join(lines).split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep:
            out.append((key.strip().lower(), value.strip()))
    return out


def find(lines: Sequence[bytes], name: bytes) -> bytes | None:
    """Value of the first header called `name` (lower-case), or None."""
    for key, value in _fields(lines):
        if key == name:
            return value
    return None


def cookie(lines: Sequence[bytes], name: str) -> str | None:
    """Value of cookie `name` in the request's Cookie headers, or None."""
    wanted = name.encode("latin-1")
    for key, value in _fields(lines):
        if key != b"cookie":
            continue
        for part in value.split(b";"):
            k, sep, v = part.strip().partition(b"=")
            if sep and k == wanted:
                return v.decode("latin-1")
    return None


def is_trusted(peer: str | None, trusted: Sequence[Network]) -> bool:
    """Whether the connecting peer is one of the configured trusted proxies."""
    if not peer or not trusted:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def _forwarded_value(value: bytes) -> bytes:
    return value if _TOKEN.match(value) else b'"' + value.replace(b'"', b'\\"') + b'"'


def forwarded_element(peer: str, host: bytes | None, proto: bytes) -> bytes:
    """One RFC 7239 element describing this hop: `for=...;host=...;proto=...`."""
    node = f"[{peer}]" if ":" in peer else peer
    parts = [b"for=" + _forwarded_value(node.encode())]
    if host:
        parts.append(b"host=" + _forwarded_value(host))
    parts.append(b"proto=" + proto)
    return b";".join(parts)


def forwarded_block(
    peer: str,
    host: bytes | None,
    proto: bytes,
    *,
    trusted: bool,
    xff: bytes | None = None,
    xfp: bytes | None = None,
    xfh: bytes | None = None,
    forwarded: bytes | None = None,
) -> bytes:
    """The X-Forwarded-* and Forwarded lines for the upstream request.

    From a trusted proxy the incoming chain is extended (its proto/host are kept); from anyone
    else incoming values are discarded, since a client could forge them.
    """
    peer_b = peer.encode()
    element = forwarded_element(peer, host, proto)
    if trusted:
        out_xff = xff + b", " + peer_b if xff else peer_b
        out_xfp = xfp or proto
        out_xfh = xfh or host
        out_fwd = forwarded + b", " + element if forwarded else element
    else:
        out_xff, out_xfp, out_xfh, out_fwd = peer_b, proto, host, element
    block = b"X-Forwarded-For: " + out_xff + b"\r\nX-Forwarded-Proto: " + out_xfp + b"\r\n"
    if out_xfh:
        block += b"X-Forwarded-Host: " + out_xfh + b"\r\n"
    return block + b"Forwarded: " + out_fwd + b"\r\n"
