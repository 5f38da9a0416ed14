"""Errors the proxy raises or answers with.

ProxyError
  ├ BadRequest        the client's request cannot be forwarded as sent (answered 4xx/501)
  └ UpstreamError     no usable answer from a backend (answered 502 / 503 / 504)

Responses the proxy writes itself carry ``Server: corral`` and ``Via: 1.1 corral`` so that they
can be told apart from a backend's own 5xx.
"""

from __future__ import annotations

import http

MARKER = b"Server: corral\r\nVia: 1.1 corral\r\n"


class ProxyError(Exception):
    """Base class; `status` is the HTTP status the proxy answers with."""

    status: int = 500

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status

    @property
    def detail(self) -> str:
        return str(self.args[0])


class BadRequest(ProxyError):
    """The client sent something the proxy will not forward (400, 405, 413, 414, 431, 501)."""

    status = 400


class UpstreamError(ProxyError):
    """No backend produced a response (502 unreachable, 503 none ready, 504 timed out)."""

    status = 502


def render(status: int, detail: str, *, close: bool, head_only: bool = False) -> bytes:
    """A complete short plain-text HTTP/1.1 response written by the proxy itself."""
    reason = http.HTTPStatus(status).phrase
    body = f"{status} {reason}: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + MARKER
        + b"Content-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )
    return head if head_only else head + body
