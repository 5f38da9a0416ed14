"""Reading requests from a client's byte stream: httptools, fed one message at a time.

The parser is fed in pieces that end where a message head (its CRLFCRLF) or a Content-Length
body ends, so the reader always knows where a request line starts. That is where it
  - stops when the connection has as many requests queued as it may (the rest of the read is
    kept, unparsed and uncopied, until the queue shrinks: one read at most per connection),
  - lets an extension method through: RFC 9110 §9.1 makes a method any token, llhttp knows
    a fixed list, so any other token is parsed as a POST (whose framing rules are those of
    every method but CONNECT) and reported under its own name.
The parsed head goes to the connection as `RequestFields`; the body to the exchange the
connection made for it.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Protocol

import httptools

from . import headers
from .errors import BadRequest, ProxyError
from .framing import LENGTH
from .request import RequestFields

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger(__name__)

_NATIVE_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"CONNECT"}
)
_NATIVE_STARTS = tuple(m + b" " for m in _NATIVE_METHODS)
_METHOD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) ")
_END = b"\r\n\r\n"


class Owner(Protocol):
    """What the reader reports to (downstream.ClientConnection)."""

    peer: str
    pipeline_full: bool  # as many requests queued as the connection may hold

    def request_parsed(self, fields: RequestFields) -> Exchange: ...
    def request_ended(self) -> None: ...
    def upgrade_requested(self, extra: bytes) -> None: ...
    def parse_failed(self, err: ProxyError) -> None: ...
    def hold_input(self, on: bool) -> None: ...


class RequestReader:
    """The parser of one client connection and everything it is in the middle of."""

    def __init__(self, owner: Owner, max_header: int, now: float) -> None:
        self.owner = owner
        self.max_header = max_header
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.fields: RequestFields | None = None  # the head being parsed
        self.ex: Exchange | None = None  # the request whose body is being parsed
        self.head_since = now  # when the head being received began (0: none); the first is due
        self.failed = False  # the stream is broken: nothing more is parsed
        self._header_bytes = 0
        self._method: bytes | None = None  # an extension method, parsed as a POST
        self._body_left = 0  # Content-Length bytes still to come
        self._tail = 0  # bytes of a CRLFCRLF the last piece ended with (0-3)
        self._carry = b""  # the start of a request line whose method is not complete yet
        self._unparsed = b""  # input kept back while the pipeline is full, from _unparsed_at
        self._unparsed_at = 0

    @property
    def idle(self) -> bool:
        """Between messages, with nothing kept back: a whole request may take the fast path."""
        return self.fields is None and self.ex is None and not self._carry and not self._unparsed

    @property
    def head_started(self) -> bool:
        """Some byte of the next request head has arrived."""
        return self.fields is not None or bool(self._carry)

    @property
    def holding(self) -> bool:
        """Input is kept back until the pipeline has room (see `resume`)."""
        return bool(self._unparsed)

    def feed(self, data: bytes, now: float) -> None:
        """Parse what the client sent."""
        if self._unparsed:  # a read that was under way when reading was paused
            self._unparsed = self._unparsed[self._unparsed_at :] + data
            self._unparsed_at = 0
            return
        if self._carry:
            data = self._carry + data
            self._carry = b""
        self._feed(data, 0, now)

    def resume(self, now: float) -> None:
        """Parse what was kept back, if the pipeline has room now."""
        data = self._unparsed
        if not data or self.owner.pipeline_full:
            return
        self._unparsed = b""
        self._feed(data, self._unparsed_at, now)
        if not self._unparsed:
            self.owner.hold_input(False)

    def stop(self) -> tuple[Exchange | None, RequestFields | None]:
        """Parse nothing more; returns the request whose body, and the head, were under way."""
        self.failed = True
        self._unparsed = self._carry = b""
        ex, fields = self.ex, self.fields
        self.ex = self.fields = None
        return ex, fields

    def close(self) -> None:
        """The connection is gone (the parser refers back to this reader: drop it now)."""
        self.stop()
        self.parser = None

    def _feed(self, data: bytes, pos: int, now: float) -> None:
        parser = self.parser
        end = len(data)
        view: memoryview | None = None
        while pos < end and not self.failed and parser is not None:
            skip = 0  # bytes of `data` the piece's prefix stands for
            prefix = b""
            if self.fields is None and self.ex is None:  # at a message boundary
                if self.owner.pipeline_full:
                    self._unparsed, self._unparsed_at = data, pos
                    self.owner.hold_input(True)
                    return
                if not self.head_since:
                    self.head_since = now
                if not data.startswith(_NATIVE_STARTS, pos):
                    # Only unusual starts are looked at: an extension method, a partial one.
                    skip = self._extension_method(data, pos)
                    if skip < 0:
                        self._carry = data[pos:]  # the method has not fully arrived yet
                        return
                    if skip:
                        prefix = b"POST"
            left = self._body_left
            if left:
                cut = pos + left if pos + left < end else end
            else:
                cut = self._head_end(data, pos, end)
            if prefix:
                piece: bytes | memoryview = prefix + data[pos + skip : cut]
            elif pos == 0 and cut == end:
                piece = data
            else:
                if view is None:
                    view = memoryview(data)
                piece = view[pos:cut]
            try:
                parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                at = exc.args[0]
                self.owner.upgrade_requested(data[pos + skip + at - len(prefix) :])
                return
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if not isinstance(cause, ProxyError):
                    log.error(
                        "internal error handling a request from %s", self.owner.peer, exc_info=cause
                    )
                    cause = ProxyError("internal proxy error", 500)
                self.owner.parse_failed(cause)
                return
            except httptools.HttpParserError as exc:
                self.owner.parse_failed(BadRequest(f"malformed request: {exc}"))
                return
            pos = cut

    def _head_end(self, data: bytes, pos: int, end: int) -> int:
        """Where the next piece ends: after the next CRLFCRLF (or at `end`)."""
        tail = self._tail
        if tail:
            # The previous piece ended inside a CRLFCRLF: it may end right here.
            rest = 4 - tail
            if data[pos : pos + rest] == _END[tail:]:
                self._tail = 0
                return pos + rest
        i = data.find(_END, pos, end)
        if i >= 0:
            self._tail = 0
            return i + 4
        self._tail = (
            3
            if data.endswith(b"\r\n\r")
            else 2
            if data.endswith(b"\r\n")
            else 1
            if data.endswith(b"\r")
            else 0
        )
        return end

    def _extension_method(self, data: bytes, pos: int) -> int:
        """Length of the method (and empty lines before it) at `pos` if it is an extension.

        0 when the parser can read the request line as it is (a method it knows, or something
        that is not a token, which it answers with 400); -1 when the method has not fully
        arrived yet. An extension method is kept in `_method`.
        """
        start = pos
        while data.startswith(b"\r\n", start):  # empty lines before a request are ignored
            start += 2
        m = _METHOD.match(data, start)
        if m is None:
            incomplete = len(data) - start < 33 and data.find(b" ", start) < 0
            return -1 if incomplete else 0
        method = m.group(1)
        if method in _NATIVE_METHODS:
            return 0
        self._method = method
        return m.end(1) - pos

    # --- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.fields = RequestFields()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        fields = self.fields
        assert fields is not None
        fields.target += url
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header:
            raise BadRequest("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self.fields
        assert fields is not None
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header:
            raise BadRequest(f"request headers larger than {self.max_header} bytes", 431)
        code = headers.REQUEST_SPECIAL.get(name.lower())
        if code is None:
            fields.lines.append(name + b": " + value + b"\r\n")
        elif code == headers.HOST:
            if fields.host is not None:
                raise BadRequest("more than one Host header")
            fields.host = value
            fields.lines.append(name + b": " + value + b"\r\n")
        elif code == headers.CONTENT_LENGTH:
            fields.content_length = value
        elif code == headers.TRANSFER_ENCODING:
            fields.transfer_encoding = value
        elif code == headers.CONNECTION:
            c = fields.connection
            fields.connection = value if c is None else c + b"," + value
        elif code == headers.UPGRADE:
            fields.upgrade_value = value
        elif code == headers.EXPECT:
            fields.lines.append(name + b": " + value + b"\r\n")
        elif code == headers.XFF:
            fields.xff = value if fields.xff is None else fields.xff + b", " + value
        elif code == headers.XFP:
            fields.xfp = value
        elif code == headers.XFH:
            fields.xfh = value
        elif code == headers.FORWARDED:
            f = fields.forwarded
            fields.forwarded = value if f is None else f + b", " + value
        # DROP: hop-by-hop, not forwarded

    def on_headers_complete(self) -> None:
        fields = self.fields
        parser = self.parser
        assert fields is not None and parser is not None
        self.fields = None
        self.head_since = 0.0
        method = self._method
        if method is not None:
            self._method = None
            fields.method = method
        else:
            fields.method = parser.get_method()
        fields.http10 = parser.get_http_version() == "1.0"
        fields.keep_alive = parser.should_keep_alive()
        fields.upgrade = parser.should_upgrade()
        ex = self.ex = self.owner.request_parsed(fields)
        if ex.head.body == LENGTH and fields.content_length is not None:
            self._body_left = int(fields.content_length)

    def on_body(self, body: bytes) -> None:
        if self._body_left:
            self._body_left -= len(body)
        ex = self.ex
        if ex is not None:
            ex.body(body)

    def on_message_complete(self) -> None:
        self._body_left = 0
        ex = self.ex
        self.ex = None
        if ex is not None:
            ex.request_done()
        self.owner.request_ended()
