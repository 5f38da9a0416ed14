"""Pure pieces: the fast-path recognisers, header helpers, error rendering."""

from __future__ import annotations

import ipaddress

import pytest

from proxy import errors, fastpath, headers

SIMPLE = b"GET /a?b=1 HTTP/1.1\r\nHost: Shop.local:8080\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Set-Cookie: a=1\r\n\r\nhello"
)


def test_simple_request_is_recognised() -> None:
    assert fastpath.simple_request(SIMPLE) == (
        b"GET",
        b"/a?b=1",
        b"Host: Shop.local:8080\r\nUser-Agent: x\r\nAccept: */*\r\n",
        b"Shop.local:8080",
    )


@pytest.mark.parametrize(
    "data",
    [
        SIMPLE[:-2],  # incomplete
        SIMPLE + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined: more than one message
        SIMPLE.replace(b"Accept", b"Content-Length: 0\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Transfer-Encoding: chunked\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Connection: close\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Upgrade: websocket\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Expect: 100-continue\r\nAccept"),
        SIMPLE.replace(b"Accept", b"X-Forwarded-For: 1.2.3.4\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Forwarded: for=x\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Keep-Alive: 5\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Proxy-Authorization: x\r\nAccept"),
        SIMPLE.replace(b"Accept", b"Host: twice\r\nAccept"),
        SIMPLE.replace(b"Host: Shop.local:8080\r\n", b""),  # no Host
        SIMPLE.replace(b"HTTP/1.1", b"HTTP/1.0"),
        SIMPLE.replace(b"Accept:", b"Accept :"),  # space before colon
        SIMPLE.replace(b"\r\nAccept", b"\r\n Accept"),  # obs-fold
        SIMPLE.replace(b"\r\nAccept", b"\nAccept"),  # bare LF
        SIMPLE.replace(b"/a?b=1", b"/a b"),
        SIMPLE.replace(b"/a?b=1", b"http://x/a"),  # absolute form: the parser handles it
        SIMPLE.replace(b"GET", b"CONNECT"),
        SIMPLE.replace(b"User-Agent: x", b"User-Agent: \x00"),
    ],
)
def test_anything_unusual_takes_the_parser_path(data: bytes) -> None:
    assert fastpath.simple_request(data) is None


def test_simple_response_is_recognised() -> None:
    assert fastpath.simple_response(RESPONSE) == (200, len(RESPONSE) - 5)
    empty = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert fastpath.simple_response(empty) == (404, len(empty))


@pytest.mark.parametrize(
    "data",
    [
        RESPONSE[:-1],  # body not all there
        RESPONSE + b"x",  # more than the body
        RESPONSE.replace(b"Content-Length: 5\r\n", b""),
        RESPONSE.replace(b"Content-Length: 5", b"Content-Length: 5\r\nContent-Length: 5"),
        RESPONSE.replace(b"Content-Length: 5", b"Content-Length: +5"),
        RESPONSE.replace(b"Set-Cookie", b"Transfer-Encoding: chunked\r\nSet-Cookie"),
        RESPONSE.replace(b"Set-Cookie", b"Connection: close\r\nSet-Cookie"),
        RESPONSE.replace(b"Set-Cookie", b"Keep-Alive: timeout=5\r\nSet-Cookie"),
        RESPONSE.replace(b"\r\nSet-Cookie", b"\r\n Set-Cookie"),  # obs-fold
        RESPONSE.replace(b"HTTP/1.1 200", b"HTTP/1.0 200"),
        RESPONSE.replace(b"200 OK", b"204 No Content"),
        RESPONSE.replace(b"200 OK", b"101 Switching"),
    ],
)
def test_unusual_responses_take_the_parser_path(data: bytes) -> None:
    assert fastpath.simple_response(data) is None


def test_forwarded_element_quotes_what_is_not_a_token() -> None:
    assert (
        headers.forwarded_element("10.0.0.1", b"shop", b"http")
        == b"for=10.0.0.1;host=shop;proto=http"
    )
    assert (
        headers.forwarded_element("::1", b"shop:8080", b"http")
        == b'for="[::1]";host="shop:8080";proto=http'
    )


def test_forwarded_block_untrusted_replaces_trusted_extends() -> None:
    untrusted = headers.forwarded_block("10.0.0.9", b"h", b"http", trusted=False, xff=b"6.6.6.6")
    assert untrusted.startswith(b"X-Forwarded-For: 10.0.0.9\r\n")
    trusted = headers.forwarded_block(
        "10.0.0.9",
        b"h",
        b"http",
        trusted=True,
        xff=b"1.2.3.4",
        xfp=b"https",
        forwarded=b"for=1.2.3.4",
    )
    assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n" in trusted
    assert b"X-Forwarded-Proto: https\r\n" in trusted
    assert b"Forwarded: for=1.2.3.4, for=10.0.0.9;host=h;proto=http\r\n" in trusted


def test_is_trusted() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert headers.is_trusted("10.1.2.3", nets)
    assert headers.is_trusted("::1", nets)
    assert not headers.is_trusted("11.0.0.1", nets)
    assert not headers.is_trusted("10.1.2.3", ())
    assert not headers.is_trusted("not-an-ip", nets)


def test_connection_tokens_and_strip_named() -> None:
    assert headers.connection_tokens(b"Keep-Alive, X-Foo ,,upgrade") == {
        b"keep-alive",
        b"x-foo",
        b"upgrade",
    }
    lines = [b"X-Foo: 1\r\n", b"X-Bar: 2\r\n", b"x-foo : 3\r\n"]
    assert headers.strip_named(lines, {b"x-foo"}) == [b"X-Bar: 2\r\n"]


def test_find_and_cookie_work_on_lines_and_blocks() -> None:
    block = [b"Host: h\r\nX-User: alice\r\nCookie: a=1; sid=xyz\r\n"]
    lines = [b"Host: h\r\n", b"Cookie: theme=dark\r\n", b"Cookie: sid=abc\r\n"]
    assert headers.find(block, b"x-user") == b"alice"
    assert headers.find(lines, b"x-user") is None
    assert headers.cookie(block, "sid") == "xyz"
    assert headers.cookie(lines, "sid") == "abc"
    assert headers.cookie(lines, "nope") is None


def test_status_line_is_cached_and_exact() -> None:
    assert headers.status_line(200, b"OK") == b"HTTP/1.1 200 OK\r\n"
    assert headers.status_line(418, b"I'm a teapot") == b"HTTP/1.1 418 I'm a teapot\r\n"
    assert headers.status_line(200, b"OK") is headers.status_line(200, b"OK")


def test_error_responses_are_marked_and_framed() -> None:
    raw = errors.render(502, "cannot connect to 127.0.0.1:1", close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"\r\nServer: corral\r\nVia: 1.1 corral\r\n" in head + b"\r\n"
    assert b"Connection: close" in head
    assert body == b"502 Bad Gateway: cannot connect to 127.0.0.1:1\n"
    assert f"Content-Length: {len(body)}".encode() in head
    assert errors.render(503, "x", close=False, head_only=True).endswith(b"\r\n\r\n")
