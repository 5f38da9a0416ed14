"""Relaying one backend response to the client: the response parser and its callbacks.

The relay is the callback object of an httptools response parser, so response bytes flow
backend → parser → these methods → client with no layer in between. Output produced while one
read is parsed is collected and written with one call. The relay owns all of the response's
state; the exchange acts on what `feed` (or `eof`) returns. A complete Content-Length response
in one read never gets here (see fastpath.simple_response).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httptools

from . import framing, headers
from .framing import CHUNK, NO_BODY
from .request import RequestHead

log = logging.getLogger(__name__)

# Connection tokens that name no header to strip, or one that must stay.
_NOT_NAMED = frozenset({b"close", b"keep-alive", b"upgrade"}) | headers.KEEP_RESPONSE

# What one `feed` achieved.
MORE, DONE, UPGRADED, BROKEN = range(4)


class ResponseRelay:
    """Turns one backend response into client bytes: header cleanup, re-framing, streaming."""

    __slots__ = (
        "_added",
        "_chunked",
        "_conn",
        "_head",
        "_head_done",
        "_lines",
        "_must_close",
        "_out",
        "_parser",
        "_te",
        "_upgrade",
        "_write",
        "bytes_out",
        "close",
        "extra",
        "finished",
        "has_length",
        "mode",
        "problem",
        "reason",
        "reusable",
        "started",
        "status",
    )

    def __init__(
        self,
        head: RequestHead,
        write: Callable[[bytes], None],
        must_close: Callable[[], bool],
        added: bytes = b"",
    ) -> None:
        self._head = head
        self._added = added  # header lines of the proxy's own for the final response
        self._write = write
        self._must_close = must_close  # asked when the final head arrives
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._out: list[bytes] = []
        self._lines: list[bytes] = []
        self._te: bytes | None = None
        self._chunked = False  # the backend's body is chunked (else by length or by close)
        self._conn: bytes | None = None
        self._upgrade: bytes | None = None
        self._head_done = False
        self.has_length = False
        self.status = 0
        self.reason = b""
        self.mode = NO_BODY
        self.close = False  # the client connection closes after this response
        self.started = False  # response bytes were produced for the client
        self.bytes_out = 0
        self.finished = False
        self.reusable = False  # the backend connection is at a message boundary
        self.extra = b""  # bytes after a 101: the first of the tunnel
        self.problem = ""  # why the response is unusable (BROKEN)

    def feed(self, data: bytes) -> int:
        """Parse one read from the backend and write what it produced; MORE, DONE, UPGRADED or BROKEN."""
        parser = self._parser
        assert parser is not None, "fed after the end of its response"
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.finished:
                self.reusable = False  # a second message in the same read
            elif self.status != 101 or not self._head.upgrade:
                self._out.clear()
                self.problem = "switched protocols unasked"
                self._parser = None
                return BROKEN
            else:
                self.extra = data[exc.args[0] :]
                self._flush()
                self._parser = None
                return UPGRADED
        except httptools.HttpParserError as exc:
            self._flush()
            if not self.finished:
                if isinstance(exc, httptools.HttpParserCallbackError):
                    log.error("internal error relaying a response", exc_info=exc)
                self.problem = f"bad response: {exc}"
                self._parser = None
                return BROKEN
            self.reusable = False  # bytes after a complete response: not at a boundary
        self._flush()
        if not self.finished:
            return MORE
        self._parser = None  # parser and relay refer to each other: free both now
        return DONE

    def eof(self) -> bool:
        """The backend closed the connection: True if that ended the response (close-delimited)."""
        if self.finished or not self._head_done:
            return self.finished
        if not framing.closed_body_complete(self.mode, self._chunked):
            return False
        if self.mode == CHUNK:
            self._out.append(b"0\r\n\r\n")
        self._flush()
        self.finished = True
        self.reusable = False
        return True

    # --- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.finished:
            self.reusable = False  # another response behind the one answering this request

    def on_status(self, reason: bytes) -> None:
        if not self.finished:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer (dropped: the response is re-framed), or a message after ours
        code = headers.RESPONSE_SPECIAL.get(name.lower())
        if code is None:
            self._lines.append(name + b": " + value + b"\r\n")
        elif code == headers.CONTENT_LENGTH:
            self.has_length = True
            self._lines.append(name + b": " + value + b"\r\n")
        elif code == headers.TRANSFER_ENCODING:
            self._te = value
            self._chunked = value.rstrip().lower().endswith(b"chunked")
        elif code == headers.CONNECTION:
            self._conn = value if self._conn is None else self._conn + b"," + value
        elif code == headers.UPGRADE:
            self._upgrade = value

    def on_headers_complete(self) -> None:
        if self.finished:
            return
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self._interim(status)
            return
        head = self._head
        self.status = status
        self._head_done = True
        if status == 101 and not head.upgrade:
            return  # refused in `feed` (a 502): nothing is relayed
        lines = self._lines
        if self._conn is not None:
            named = headers.connection_tokens(self._conn) - _NOT_NAMED
            if named:
                lines = headers.strip_named(lines, named)
        head_request = head.method == b"HEAD"
        f = framing.response_framing(
            status,
            head_request=head_request,
            http10=head.http10,
            has_length=self.has_length,
            transfer_encoding=self._te,
            chunked=self._chunked,
            upgrade_requested=head.upgrade,
            upgrade_value=self._upgrade,
            must_close=self._must_close(),
        )
        self.mode = f.mode
        self.close = f.close
        self._out.append(
            b"".join(
                (headers.status_line(status, self.reason), *lines, self._added, f.lines, b"\r\n")
            )
        )
        self.started = True
        if f.mode == NO_BODY and status != 101:
            # llhttp cannot be told the request was HEAD: the response ends here, and the next
            # one on this connection gets a new relay (and parser).
            framed = framing.reusable_after_head(head_request, self.has_length, self._te)
            self.finished = True
            self.reusable = framed and parser.should_keep_alive()

    def _interim(self, status: int) -> None:
        # 100 Continue and friends: relayed to HTTP/1.1 clients, the final response follows.
        if not self._head.http10:
            self._out.append(
                b"".join((headers.status_line(status, self.reason), *self._lines, b"\r\n"))
            )
        self.reason = b""
        self._lines.clear()
        self.has_length = self._chunked = False
        self._te = self._conn = self._upgrade = None

    def on_body(self, data: bytes) -> None:
        if self.finished:
            self.reusable = False  # bytes past a bodiless response (HEAD with a length)
            return
        self.bytes_out += len(data)
        out = self._out
        if self.mode == CHUNK:
            out.append(b"%x\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        else:
            out.append(data)

    def on_message_complete(self) -> None:
        if not self._head_done or self.finished or self.status == 101:
            return  # end of an interim (1xx) message, of a bodiless one, or a tunnel's start
        if self.mode == CHUNK:
            self._out.append(b"0\r\n\r\n")
        parser = self._parser
        assert parser is not None
        self.finished = True
        self.reusable = parser.should_keep_alive()

    def _flush(self) -> None:
        out = self._out
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
