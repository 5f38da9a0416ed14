"""Relaying a backend's response to the client (the upstream parser's callbacks).

The exchange is the callback object of the httptools response parser, so response bytes flow
backend → parser → these methods → client transport with no layer in between. Output produced
while one read is parsed is collected in `out` and written with one call. A whole
Content-Length response in one read skips the parser (fastpath.simple_response).
"""

from __future__ import annotations

from . import framing, headers
from .framing import CHUNK, NO_BODY
from .state import ExchangeState


class ResponseRelay(ExchangeState):
    """Response side of an exchange: framing for the client, header cleanup, streaming."""

    @property
    def simple_ok(self) -> bool:
        """Whether a fast-path response (see fastpath.simple_response) can be relayed as is."""
        return (
            self.req_done
            and self.keep_alive
            and not self.http10
            and not self.upgrade
            and self.method != b"HEAD"
            and not self.client.closing
        )

    def simple_response(self, data: bytes, status: int, head_len: int) -> None:
        """Relay a complete Content-Length response received in one read, unchanged."""
        self.status = status
        self.head_done = self.resp_started = True
        self.bytes_out = len(data) - head_len
        self.client.write(data)
        self._complete(reusable=True)

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a trailer: dropped (the response is re-framed)
        code = headers.RESPONSE_SPECIAL.get(name.lower())
        if code is None:
            self.resp_lines.append(name + b": " + value + b"\r\n")
        elif code == headers.CONTENT_LENGTH:
            self.resp_cl = True
            self.resp_lines.append(name + b": " + value + b"\r\n")
        elif code == headers.TRANSFER_ENCODING:
            self.resp_te = value
            self.resp_chunked = value.rstrip().lower().endswith(b"chunked")
        elif code == headers.CONNECTION:
            self.resp_conn = value if self.resp_conn is None else self.resp_conn + b"," + value
        elif code == headers.UPGRADE:
            self.resp_upgrade = value

    def on_headers_complete(self) -> None:
        conn = self.conn
        assert conn is not None and conn.parser is not None
        status = conn.parser.get_status_code()
        if status < 200 and status != 101:
            self._interim(status)
            return
        self.status = status
        self.head_done = True
        if status == 101 and not self.upgrade:
            return  # refused in upstream_upgraded (a 502), nothing is relayed
        client = self.client
        lines = self.resp_lines
        if self.resp_conn is not None:
            named = headers.connection_tokens(self.resp_conn) - {b"close", b"keep-alive"}
            if named - {b"upgrade"}:
                lines = headers.strip_named(lines, named)
        f = framing.response_framing(
            status,
            head_request=self.method == b"HEAD",
            http10=self.http10,
            has_length=self.resp_cl,
            transfer_encoding=self.resp_te,
            chunked=self.resp_chunked,
            upgrade_requested=self.upgrade,
            upgrade_value=self.resp_upgrade,
            must_close=not self.keep_alive or not self.req_done or client.closing,
        )
        self.mode = f.mode
        self.close_after = f.close
        self.out.append(
            b"".join((headers.status_line(status, self.reason), *lines, f.lines, b"\r\n"))
        )
        self.resp_started = True
        if self.mode == NO_BODY and status != 101:
            # llhttp cannot be told the request was HEAD; end here, the parser is replaced.
            framed = framing.reusable_after_head(self.method == b"HEAD", self.resp_cl, self.resp_te)
            self._complete(reusable=framed and conn.parser.should_keep_alive())

    def _interim(self, status: int) -> None:
        # 100 Continue and friends: relayed to HTTP/1.1 clients, the final response follows.
        if not self.http10:
            self.out.append(
                b"".join((headers.status_line(status, self.reason), *self.resp_lines, b"\r\n"))
            )
        self.reason = b""
        self.resp_lines.clear()
        self.resp_cl = self.resp_chunked = False
        self.resp_te = self.resp_conn = self.resp_upgrade = None

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        self.bytes_out += len(data)
        if self.mode == CHUNK:
            self.out.append(b"%x\r\n" % len(data))
            self.out.append(data)
            self.out.append(b"\r\n")
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if not self.head_done or self.done:
            return  # end of an interim (1xx) message, or HEAD already completed
        if self.status == 101:
            return  # the tunnel starts in upstream_upgraded
        if self.mode == CHUNK:
            self.out.append(b"0\r\n\r\n")
        conn = self.conn
        parser = conn.parser if conn is not None else None
        self._complete(reusable=parser is not None and parser.should_keep_alive())

    def flush(self) -> None:
        """Write the output collected while parsing one read."""
        out = self.out
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
