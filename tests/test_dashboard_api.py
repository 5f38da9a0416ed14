"""The dashboard's server side against a real daemon: /v1/stats, its SSE stream, the TCP
listener's token, the page's files, and the browser guards on the socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor.daemon import Daemon
from supervisor.errors import SupervisorError

from .conftest import http_get, running_daemon, wait_until, web_service, write_config

WORKER = f"""
[services.worker]
command = ["{sys.executable}", "-c", "import time\\nwhile True: time.sleep(1)"]
venv = false
stop_timeout = "1s"
"""


def stack(dashboard: str = 'listen = "127.0.0.1:0"') -> str:
    return (
        f'project = "shop"\n[proxy]\nlisten = "127.0.0.1:0"\n[dashboard]\n{dashboard}\n'
        + web_service("web", instances=2)
        + WORKER
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(write_config(tmp_path, stack())) as d:
        await wait_until(lambda: all(r["state"] in ("ready", "running") for r in d.ps()), 20)
        yield d


def _socket_session(d: Daemon) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(d.plan.daemon.socket)))


async def _socket_get(d: Daemon, path: str, **kw: Any) -> tuple[int, Any]:
    async with _socket_session(d) as http, http.get("http://corral" + path, **kw) as resp:
        body = await resp.read()
        return resp.status, json.loads(body) if resp.content_type == "application/json" else body


async def _dashboard_info(d: Daemon) -> tuple[str, str]:
    status, info = await _socket_get(d, "/v1/dashboard")
    assert status == 200, info
    base, _, token = info["url"].partition("/#token=")
    return base, token


def _proxy_port(d: Daemon) -> int:
    return d.traffic.addresses[0][1]


def _web(snapshot: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in snapshot["services"] if s["name"] == "web")


async def _frames(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    kind, data = "", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line:
            yield kind, json.loads(data)


# --- /v1/stats -------------------------------------------------------------------------------


async def test_stats_has_the_whole_fleet_and_counts_real_proxy_traffic(daemon: Daemon) -> None:
    status, snap = await _socket_get(daemon, "/v1/stats")
    assert status == 200
    assert snap["project"] == "shop"
    assert [s["name"] for s in snap["services"]] == ["web", "worker"]
    web = _web(snap)
    assert (web["routed"], web["desired"], web["total"], web["up"]) == (True, 2, 2, 2)
    for inst in web["instances"]:
        for key in ("state", "pid", "port", "uptime_s", "restarts", "cpu_percent", "rss_bytes"):
            assert key in inst, key
        assert inst["rss_bytes"] > 0
    pids = {r["pid"] for r in daemon.ps()}
    assert {i["pid"] for s in snap["services"] for i in s["instances"]} == pids

    for _ in range(20):
        code, _body = await http_get(_proxy_port(daemon), "/hello")
        assert code == 200

    async def counted() -> bool:
        _, snap = await _socket_get(daemon, "/v1/stats")
        return bool(_web(snap)["requests"] == 20)

    await wait_until(counted, 10, "20 proxied requests in /v1/stats")
    _, snap = await _socket_get(daemon, "/v1/stats")
    web = _web(snap)
    assert sum(i["requests"] for i in web["instances"]) == 20
    assert web["rps"] > 0 and snap["totals"]["rps"] == web["rps"]
    assert web["p99_ms"] is not None and web["p99_ms"] > 0
    assert web["in_flight"] == 0
    worker = next(s for s in snap["services"] if s["name"] == "worker")
    assert (worker["routed"], worker["rps"], worker["instances"][0]["rps"]) == (False, None, None)


async def test_stream_pushes_the_event_and_a_fresh_snapshot_at_once(daemon: Daemon) -> None:
    # The tick is 60 s: anything that arrives sooner was pushed by the kill itself.
    params = {"follow": "1", "interval": "60"}
    async with (
        _socket_session(daemon) as http,
        http.get("http://corral/v1/stats", params=params) as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        frames = _frames(resp)
        kind, snap = await anext(frames)
        assert kind == "stats"
        victim = _web(snap)["instances"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        async with asyncio.timeout(10):
            seen_event = False
            async for kind, data in frames:
                if kind == "event" and data["instance"] == victim["name"]:
                    seen_event = True
                elif kind == "stats" and seen_event:
                    row = _web(data)["instances"][0]
                    if row["pid"] != victim["pid"]:
                        break
        assert row["name"] == victim["name"]


async def test_stream_sends_recent_events_first_and_ends_with_the_daemon(tmp_path: Path) -> None:
    async with running_daemon(write_config(tmp_path, stack())) as d:
        await wait_until(lambda: all(r["state"] in ("ready", "running") for r in d.ps()), 20)
        expected = [e.to_json() for e in d.events.recent(3)]
        async with (
            _socket_session(d) as http,
            http.get("http://corral/v1/stats", params={"follow": "1", "events": "3"}) as resp,
        ):
            frames = _frames(resp)
            first = [await anext(frames) for _ in range(4)]
            assert first[:3] == [("event", e) for e in expected]
            assert first[3][0] == "stats"
            d.shutdown_requested.set()
            async with asyncio.timeout(30):  # shutdown closes the stream: the loop ends
                async for _ in frames:
                    pass
            assert resp.content.at_eof()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "interval=fast",
            "query parameter 'interval' must be a number from 0.25 to 60, got 'fast'",
        ),
        ("interval=0", "query parameter 'interval' must be a number from 0.25 to 60, got '0'"),
        ("events=-1", "query parameter 'events' must be a number from 0 to 1000, got '-1'"),
    ],
)
async def test_stream_rejects_bad_parameters(daemon: Daemon, query: str, message: str) -> None:
    status, body = await _socket_get(daemon, f"/v1/stats?follow=1&{query}")
    assert (status, body) == (400, {"error": message})


# --- the TCP listener and its token -------------------------------------------------------------


async def test_tcp_refuses_every_api_call_without_the_token(daemon: Daemon) -> None:
    base, token = await _dashboard_info(daemon)
    assert base.startswith("http://127.0.0.1:") and len(token) >= 32
    pids = sorted(r["pid"] for r in daemon.ps())
    async with aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", "/v1/stats"),
            ("GET", "/v1/stats?follow=1"),
            ("GET", "/v1/logs"),
            ("POST", "/v1/restart"),
            ("POST", "/v1/stop"),
            ("POST", "/v1/scale"),
        ]:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {token}"},
                {"Cookie": f"token={token}"},  # a cookie alone is what CSRF would send
            ):
                async with http.request(method, base + path, headers=headers, json={}) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert "corral dashboard --url" in (await resp.json())["error"]
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(base + f"/v1/stats?token={token}") as resp:
            assert resp.status == 401  # never in the query string: it would end up in logs
    assert sorted(r["pid"] for r in daemon.ps()) == pids  # nothing was restarted or stopped


async def test_tcp_with_the_token_serves_the_views_api_and_nothing_more(daemon: Daemon) -> None:
    base, token = await _dashboard_info(daemon)
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(base + "/v1/stats") as resp:
            assert resp.status == 200
            assert [s["name"] for s in (await resp.json())["services"]] == ["web", "worker"]
        async with http.post(base + "/v1/scale", json={"counts": {"web": 3}}) as resp:
            assert resp.status == 200
        assert daemon.services["web"].desired == 3
        async with http.post(base + "/v1/scale", json={"counts": {"nope": 1}}) as resp:
            assert resp.status == 404  # the control API's errors, unchanged
            assert "no service 'nope'" in (await resp.json())["error"]
        # Not needed by the page, so not on the network: daemon-level orders stay on the socket.
        for path in ("/v1/shutdown", "/v1/reload", "/v1/dashboard/token"):
            async with http.post(base + path) as resp:
                assert resp.status in (404, 405), path
        async with http.get(base + "/v1/dashboard") as resp:
            assert resp.status in (404, 405)  # the token is never echoed over TCP
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 404
    assert not daemon.shutdown_requested.is_set()


async def test_cross_site_requests_are_refused_even_with_the_token(daemon: Daemon) -> None:
    base, token = await _dashboard_info(daemon)
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for headers in (
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            async with http.post(base + "/v1/stop", json={}, headers=headers) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"] == (
                    "cross-site requests to the control API are refused"
                )
        same = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        async with http.post(base + "/v1/start", json={}, headers=same) as resp:
            assert resp.status == 200
    assert all(r["pid"] for r in daemon.ps())


async def test_page_and_assets_are_served_without_the_token(daemon: Daemon) -> None:
    base, _ = await _dashboard_info(daemon)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
            html = await resp.text()
            assert 'src="ui/app.js"' in html and "http" not in html.replace("http-equiv", "")
        for name, kind in [
            *((f"{m}.js", "text/javascript") for m in ("app", "api", "dom", "fleet", "logs")),
            ("style.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            async with http.get(f"{base}/ui/{name}") as resp:
                assert (resp.status, resp.content_type) == (200, kind)
                assert b"https://" not in await resp.read()  # no CDN, no external fonts
        for path in ("/ui/token.py", "/ui/..%2Fserver.py", "/ui/%2e%2e/__init__.py"):
            async with http.get(base + path) as resp:
                assert resp.status == 404, path


async def test_the_same_page_is_on_the_socket(daemon: Daemon) -> None:
    status, body = await _socket_get(daemon, "/")
    assert status == 200 and b"ui/app.js" in body
    status, body = await _socket_get(daemon, "/ui/app.js")
    assert status == 200 and b"v1/stats?follow=1" in body


async def test_socket_refuses_browser_requests_by_dns_name_and_cross_site(daemon: Daemon) -> None:
    # Reached with `ssh -L 9100:<socket>`: a page on another site must not drive the daemon
    # through the forwarded port, by a cross-site POST or by DNS rebinding.
    rebound = {"Host": "attacker.example:9100", "Sec-Fetch-Site": "same-origin"}
    status, body = await _socket_get(daemon, "/v1/ps", headers=rebound)
    assert status == 403 and "DNS rebinding" in body["error"]
    async with _socket_session(daemon) as http:
        headers = {"Host": "localhost:9100", "Origin": "http://evil.example"}
        async with http.post("http://corral/v1/stop", json={}, headers=headers) as resp:
            assert resp.status == 403
    ok = {"Host": "localhost:9100", "Origin": "http://localhost:9100"}
    status, _ = await _socket_get(daemon, "/v1/stats", headers=ok)
    assert status == 200
    status, _ = await _socket_get(daemon, "/v1/ps", headers={"Host": "corral.example.com"})
    assert status == 200  # not a browser (no Origin, no Sec-Fetch-*): the CLI and curl
    assert all(r["pid"] for r in daemon.ps())


async def test_socket_only_without_listen(tmp_path: Path) -> None:
    async with running_daemon(write_config(tmp_path, stack(dashboard=""))) as d:
        status, info = await _socket_get(d, "/v1/dashboard")
        assert status == 200
        assert (info["listen"], info["url"], info["token_file"]) == (None, None, None)
        assert not (d.plan.daemon.state_dir / "dashboard.token").exists()
        status, _ = await _socket_get(d, "/v1/stats")
        assert status == 200


# --- the token file ------------------------------------------------------------------------------


async def test_token_file_is_private_survives_restarts_and_rotates(tmp_path: Path) -> None:
    path = write_config(tmp_path, stack())
    async with running_daemon(path) as d:
        _, first = await _dashboard_info(d)
        token_file = d.plan.daemon.state_dir / "dashboard.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() == first
    async with running_daemon(path) as d:
        base, again = await _dashboard_info(d)
        assert again == first  # bookmarked URLs keep working after a daemon restart
        async with (
            _socket_session(d) as http,
            http.post("http://corral/v1/dashboard/token") as resp,
        ):
            rotated = (await resp.json())["url"].partition("#token=")[2]
        assert rotated != first and token_file.read_text().strip() == rotated
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        async with aiohttp.ClientSession() as http:
            for token, expected in ((first, 401), (rotated, 200)):
                auth = {"Authorization": f"Bearer {token}"}
                async with http.get(base + "/v1/stats", headers=auth) as resp:
                    assert resp.status == expected


async def test_a_token_file_others_could_read_is_replaced(tmp_path: Path) -> None:
    path = write_config(tmp_path, stack())
    token_file = tmp_path / ".corral" / "dashboard.token"
    token_file.parent.mkdir()
    token_file.write_text("x" * 43 + "\n")
    token_file.chmod(0o644)
    async with running_daemon(path) as d:
        _, token = await _dashboard_info(d)
    assert token != "x" * 43
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


async def test_a_taken_dashboard_port_fails_the_start_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, stack(dashboard=f'listen = "127.0.0.1:{port}"'))
        with pytest.raises(SupervisorError) as info:
            async with running_daemon(path):
                pass
    assert str(info.value) == (
        f"dashboard cannot listen on 127.0.0.1:{port} ([dashboard] listen in {path}): "
        "Address already in use"
    )
    assert not (tmp_path / ".corral" / "corral.sock").exists()
