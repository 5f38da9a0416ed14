"""Control API input: every field of every endpoint is type-checked; bad input is a 400."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor.daemon import Daemon

from .conftest import all_ready, running_daemon, wait_until, web_service, write_config


async def request(
    socket: Path, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.0 request on the Unix socket: (status, body)."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_unix_connection(str(socket))
        head = f"{method} {path} HTTP/1.0\r\nHost: corral\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await reader.read()
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


BAD_BODIES = [
    ("/v1/restart", {"all_at_once": "no"}, "'all_at_once' must be true or false, got \"no\""),
    ("/v1/restart", {"all_at_once": 1}, "'all_at_once' must be true or false, got 1"),
    ("/v1/restart", {"targets": "web"}, "'targets' must be a list of non-empty strings"),
    ("/v1/stop", {"targets": [1]}, "'targets' must be a list of non-empty strings, got [1]"),
    ("/v1/stop", {"targets": [""]}, "'targets' must be a list of non-empty strings"),
    ("/v1/stop", {"target": ["web"]}, "unknown field \"target\" (fields: 'targets')"),
    ("/v1/start", {"all_at_once": True}, "unknown field \"all_at_once\" (fields: 'targets')"),
    ("/v1/scale", {"counts": {"web": "2"}}, "'counts.web' must be an integer from 0 to 1000"),
    ("/v1/scale", {"counts": {"web": 1001}}, "'counts.web' must be an integer from 0 to 1000"),
    ("/v1/scale", {"counts": {"web": True}}, "got true"),
    ("/v1/scale", {"counts": {}}, "'counts' must map service names to instance counts"),
    ("/v1/scale", {"counts": {"web": 1}, "save": "yes"}, "'save' must be true or false"),
    ("/v1/services/web/scale", {"count": -1}, "'count' must be an integer from 0 to 1000"),
    ("/v1/services/web/scale", {"count": 1.5}, "got 1.5"),
    ("/v1/services/web/scale", {}, "'count' is required"),
    ("/v1/reload", {"now": True}, 'unknown field "now" (fields: none)'),
    ("/v1/shutdown", {"now": True}, 'unknown field "now" (fields: none)'),
]

BAD_RAW = [
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested too deeply"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "invalid JSON: nested too deeply"),
    (b'{"targets": ["caf\xe9"]}', "invalid JSON: 'utf-8' codec can't decode"),
    (b"[1, 2]", "expected a JSON object"),
    (b"{bad", "invalid JSON: Expecting property name"),
]

BAD_QUERIES = [
    ("/v1/logs?follow=maybe", "query parameter 'follow' must be 1 or 0 (true/false), got 'maybe'"),
    ("/v1/logs?n=-1", "query parameter 'n' must be an integer from 0 to 1000000, got '-1'"),
    ("/v1/logs?n=99999999999999999", "from 0 to 1000000"),
    ("/v1/logs?n=%C2%B2", "got '²'"),
    ("/v1/logs?folow=1", "unknown query parameter 'folow' (parameters: 'target', 'n', 'follow')"),
    ("/v1/events?n=abc", "query parameter 'n' must be an integer from 0 to 1000000"),
    ("/v1/events?target=web", "unknown query parameter 'target'"),
    ("/v1/wait?timeout=inf", "'timeout' must be a number of seconds from 0 to 86400, got 'inf'"),
    ("/v1/wait?timeout=nan", "got 'nan'"),
    ("/v1/wait?timeout=-1", "got '-1'"),
    ("/v1/wait?timeout=1e9", "got '1e9'"),
]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(write_config(tmp_path, web_service("web", instances=2))) as d:
        await wait_until(lambda: all_ready(d, "web", 2), what="web ready")
        yield d


async def test_bad_input_is_a_400_and_changes_nothing(daemon: Daemon) -> None:
    socket = daemon.plan.daemon.socket
    pids = sorted(r["pid"] for r in daemon.ps())
    cases = [(p, json.dumps(b).encode(), m) for p, b, m in BAD_BODIES]
    cases += [("/v1/restart", raw, m) for raw, m in BAD_RAW]
    for path, body, message in cases:
        status, answer = await request(socket, "POST", path, body)
        assert status == 400, (path, body[:40], answer)
        error = json.loads(answer)["error"]
        assert message in error, (path, body[:40], error)
    for path, message in BAD_QUERIES:
        status, answer = await request(socket, "GET", path)
        assert status == 400, (path, answer)
        assert message in json.loads(answer)["error"], (path, answer)
    # Nothing was restarted, scaled, saved or shut down by any of it.
    assert not daemon.shutdown_requested.is_set()
    assert sorted(r["pid"] for r in daemon.ps()) == pids
    assert daemon.services["web"].desired == 2
    assert "instances = 2" in daemon.plan.path.read_text()
    status, _ = await request(socket, "GET", "/v1/ps")
    assert status == 200


async def test_good_input_still_works(daemon: Daemon) -> None:
    socket = daemon.plan.daemon.socket
    body = json.dumps({"targets": ["web.1"], "all_at_once": True}).encode()
    status, answer = await request(socket, "POST", "/v1/restart", body)
    assert status == 200, answer
    status, answer = await request(socket, "POST", "/v1/services/web/scale", b'{"count": 1}')
    assert status == 200, answer
    assert daemon.services["web"].desired == 1
    for path in ("/v1/logs?n=0&follow=false", "/v1/events?n=3&follow=0", "/v1/wait?timeout=0"):
        status, answer = await request(socket, "GET", path)
        assert status == 200, (path, answer)
