"""Errors the proxy answers with: one tree, each class with its HTTP status.

ProxyError                 base; `status` is what the proxy answers, `detail` says why
  ├ ClientError            the client's fault (4xx): never charged to a backend
  │   ├ BadRequest         cannot be forwarded as sent (400, 404, 405, 413, 414, 431, 501)
  │   └ ClientTimeout      the head or body did not arrive in time (408)
  └ UpstreamError          no usable answer from a backend (502: refused, reset, malformed)
      ├ NoBackend          no ready backend in the pool (503)
      └ UpstreamTimeout    no response within `timeouts.read` (504)

They are raised in the parser callbacks and caught where the connection feeds its parser
(downstream.py), or built by the exchange and answered (`Exchange.answer`); none reaches the
event loop. Wrong arguments to the proxy's API raise ValueError, as usual in Python.

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


class ClientError(ProxyError):
    """The client's request or behaviour ended the exchange (4xx)."""

    status = 400


class BadRequest(ClientError):
    """The client sent something the proxy will not forward (400, 404, 405, 413, 414, 431, 501)."""


class ClientTimeout(ClientError):
    """The request head or body stalled past `timeouts.header` / `timeouts.body` (408)."""

    status = 408


class UpstreamError(ProxyError):
    """No backend produced a usable response (502: unreachable, closed, malformed)."""

    status = 502


class NoBackend(UpstreamError):
    """The pool has no ready backend (503): none came within the queue timeout, or none can."""

    status = 503


class UpstreamTimeout(UpstreamError):
    """The backend went silent for longer than `timeouts.read` (504)."""

    status = 504


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
