"""/metrics of a live daemon, as Prometheus gets it: every family the docs list, the output
accepted by the real `promtool check metrics`, and the `[metrics] listen` TCP listener
scraped with a plain HTTP GET (the only thing served there)."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
from pathlib import Path

from supervisor.daemon import Daemon
from supervisor.ports import free_port

from .capabilities import require_tool
from .conftest import PY, http_get, rows_of, running_daemon, wait_until, web_service, write_config
from .test_hostile import unix_get

FLAKY = f"""
[services.flaky]
command = ["{PY}", "-c", "import time; time.sleep(0.3); raise SystemExit(3)"]
venv = false
min_uptime = "100ms"
backoff = {{ initial = "50ms", max = "100ms" }}

[services.tool]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
stop_timeout = "2s"
"""


def _config(tmp_path: Path, metrics_port: int) -> Path:
    text = (
        f'project = "scrape"\n[proxy]\nlisten = "127.0.0.1:0"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        + web_service("web", instances=2)
        + FLAKY
    )
    return write_config(tmp_path, text)


def _tcp_get(port: int, target: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def _proxy_port(daemon: Daemon) -> int:
    return daemon.traffic.addresses[0][1]


async def test_a_live_daemons_metrics_pass_promtool_and_cover_every_family(
    tmp_path: Path,
) -> None:
    promtool = require_tool("promtool", "promtool")
    port = free_port()
    async with running_daemon(_config(tmp_path, port)) as daemon:
        await wait_until(
            lambda: (
                all(r["state"] == "ready" for r in rows_of(daemon, "web"))
                and rows_of(daemon, "tool")[0]["state"] == "running"
                and int(str(rows_of(daemon, "flaky")[0]["restarts"])) >= 1
            ),
            timeout=60,
        )
        for _ in range(6):
            status, _ = await http_get(_proxy_port(daemon), "/")
            assert status == 200
        daemon.stats()  # the sampler's first round has RSS for every live instance
        await wait_until(lambda: all(r["rss_bytes"] for r in daemon.ps() if r["pid"]))

        code, body = await asyncio.to_thread(unix_get, daemon.plan.daemon.socket, "/metrics")
        assert code == 200
        text = body.decode()
        check = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=body,
            capture_output=True,
            timeout=30,
        )
        # promtool exits non-zero on a parse error and on any lint problem; it prints both.
        assert check.returncode == 0, (check.stdout + check.stderr).decode()

        lines = text.splitlines()
        types = {line.split()[2]: line.split()[3] for line in lines if line.startswith("# TYPE")}
        for family, kind in {
            "corral_instance_up": "gauge",
            "corral_instance_state": "gauge",
            "corral_instance_restarts_total": "counter",
            "corral_instance_restarts_by_reason_total": "counter",
            "corral_instance_resident_memory_bytes": "gauge",
            "corral_instance_cpu_percent": "gauge",
            "corral_venv_build_seconds": "gauge",
            "corral_proxy_backend_requests_total": "counter",
            "corral_proxy_backend_errors_total": "counter",
            "corral_proxy_backend_latency_seconds": "histogram",
            "corral_proxy_backend_in_flight": "gauge",
            "corral_proxy_backend_ejected": "gauge",
            "corral_proxy_route_responses_total": "counter",
            "corral_proxy_route_latency_seconds": "histogram",
            "corral_proxy_in_flight": "gauge",
            "corral_proxy_retries_total": "counter",
            "corral_proxy_ejections_total": "counter",
        }.items():
            assert types.get(family) == kind, (family, types.get(family))
        # The state label: one series per state, 1 for the current one.
        assert 'corral_instance_state{service="web",instance="web.1",state="ready"} 1' in lines
        assert 'corral_instance_state{service="web",instance="web.1",state="crashed"} 0' in lines
        # Restarts with their reason.
        flaky = [
            line
            for line in lines
            if line.startswith(
                'corral_instance_restarts_by_reason_total{service="flaky",instance="flaky.1",'
                'reason="exit"} '
            )
        ]
        assert flaky and int(flaky[0].rsplit(" ", 1)[1]) >= 1, flaky
        # RSS per instance, from the sampler; the venv the daemon built for `tool`.
        rss = [line for line in lines if line.startswith("corral_instance_resident_memory_bytes{")]
        assert any('instance="web.2"' in line and int(line.split()[-1]) > 0 for line in rss)
        assert any(line.startswith('corral_venv_build_seconds{service="tool"} ') for line in lines)
        # The proxy's: six requests on the one route, counted and timed.
        route = '{pool="web",host="",path="/"'
        assert f'corral_proxy_route_responses_total{route},code="2xx"}} 6' in lines
        assert f"corral_proxy_route_latency_seconds_count{route}}} 6" in lines
        assert f'corral_proxy_route_latency_seconds_bucket{route},le="+Inf"}} 6' in lines
        assert 'corral_proxy_retries_total{pool="web"} 0' in lines
        assert "corral_proxy_in_flight 0" in lines

        # The TCP listener: a plain GET, the same families; nothing but /metrics there.
        code, ctype, tcp = await asyncio.to_thread(_tcp_get, port, "/metrics")
        assert (code, ctype) == (200, "text/plain; charset=utf-8")
        tcp_types = [line for line in tcp.decode().splitlines() if line.startswith("# TYPE")]
        assert tcp_types == [line for line in lines if line.startswith("# TYPE")]
        code, _, _ = await asyncio.to_thread(_tcp_get, port, "/v1/status")
        assert code == 404


async def test_retries_and_ejections_are_counted(tmp_path: Path) -> None:
    """A backend that is gone: the request is retried on the other, the dead one ejected."""
    dead = free_port()
    text = """
project = "eject"
[proxy]
listen = "127.0.0.1:0"
retries = 1
eject = { failures = 1, cooldown = "60s" }
""" + web_service("web", instances=2)
    async with running_daemon(write_config(tmp_path, text)) as daemon:
        await wait_until(lambda: all(r["state"] == "ready" for r in rows_of(daemon, "web")))
        pool = daemon.traffic.pools["web"]
        victim = pool.backends()[0]
        victim.port = dead  # its process is up; its address now refuses connections
        for _ in range(4):
            status, _ = await http_get(_proxy_port(daemon), "/")
            assert status == 200
        code, body = await asyncio.to_thread(unix_get, daemon.plan.daemon.socket, "/metrics")
        assert code == 200
        lines = body.decode().splitlines()
        assert 'corral_proxy_retries_total{pool="web"} 1' in lines
        assert 'corral_proxy_ejections_total{pool="web"} 1' in lines
        ejected = [
            line
            for line in lines
            if line.startswith("corral_proxy_backend_ejected{")
            and f'backend="{victim.key}"' in line
        ]
        assert ejected and ejected[0].endswith(" 1"), ejected
