"""A real Corral stack in a work dir, and an HTTP load through its proxy (bench/chaos, bench/soak).

Only processes started here are ever signalled, by pid: the daemon (from its lock file) and
whatever carries one of the daemon tokens seen in `state.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
BACKEND = HERE / "chaos_backend.py"
PATHS = (("/", 0.80), ("/slow", 0.15), ("/big", 0.05))
BIG_SIZE = 16 * 65536


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_config(port: int, instances: int, service: str) -> str:
    """corral.toml: the proxy on `port`, `instances` of chaos_backend.py; `service` adds keys."""
    return f"""
[proxy]
listen = "127.0.0.1:{port}"

[services.web]
command = ["{sys.executable}", "{BACKEND}"]
instances = {instances}
port = "auto"
venv = false
{service}
"""


class Stack:
    """`corral up -d` on a generated corral.toml; ps/status through the CLI's own client."""

    def __init__(self, work: Path, corral: str, config: str) -> None:
        self.work = work
        self.corral = corral
        self.path = work / "corral.toml"
        self.path.write_text(config)
        self.tokens: set[str] = set()

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.corral, *args],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def up(self) -> None:
        result = self.run("up", "-d", "--timeout", "120")
        if result.returncode != 0:
            raise SystemExit(f"corral up -d failed:\n{result.stdout}{result.stderr}")
        self._remember_token()

    def down(self) -> None:
        self.run("down", "--timeout", "60")

    def ps(self) -> list[dict[str, Any]]:
        result = self.run("ps", "--json", timeout=30)
        if result.returncode != 0:
            return []
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return [r for r in rows if not r.get("retiring") and not r.get("incoming")]

    def daemon_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.work / ".corral" / "daemon.lock").read_text())
        return None

    def daemon_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / ".corral" / "daemon.log").read_text(errors="replace")
        return ""

    def _remember_token(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads((self.work / ".corral" / "state.json").read_text())
            self.tokens.add(str(state["token"]))

    def cleanup(self) -> None:
        """Stop the daemon and anything left with one of our tokens (by pid)."""
        if self.daemon_pid() is not None and self.run("ps", timeout=30).returncode == 0:
            self.down()
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("CORRAL_TOKEN") in self.tokens:
                    proc.kill()


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.05) -> float:
    """Seconds until predicate() was true; SystemExit after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


# --- load ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    start: float  # time.monotonic()
    latency: float
    path: str
    outcome: str  # ok | cut | no-response | 5xx | refused | timeout
    instance: str = ""
    status: int = 0


@dataclass
class Load:
    """`connections` keep-alive clients in a loop, each request recorded."""

    port: int
    connections: int = 32
    max_requests: int = 2_000_000
    rate: float = 0.0  # requests per second over all connections; 0 = as fast as they go
    records: list[Record] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=70)
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session, i) for i in range(self.connections)))

    def stop(self) -> None:
        self._stop.set()

    async def _worker(self, session: Any, seed: int) -> None:
        import aiohttp

        rng = random.Random(seed)
        paths = [p for p, _ in PATHS]
        weights = [w for _, w in PATHS]
        url = f"http://127.0.0.1:{self.port}"
        while not self._stop.is_set() and len(self.records) < self.max_requests:
            path = rng.choices(paths, weights)[0]
            start = time.monotonic()
            record = Record(start, 0.0, path, "ok")
            got_head = False
            try:
                async with session.get(url + path) as response:
                    got_head = True
                    record.status = response.status
                    record.instance = response.headers.get("X-Instance", "")
                    body = await response.read()
                    if response.status >= 500:
                        record.outcome = "5xx"
                    elif path == "/big" and len(body) != BIG_SIZE:
                        record.outcome = "cut"
            except aiohttp.ClientConnectorError:
                record.outcome = "refused"
            except aiohttp.ClientPayloadError:
                record.outcome = "cut"
            except (aiohttp.ClientError, ConnectionError):
                record.outcome = "cut" if got_head else "no-response"
            except TimeoutError:
                record.outcome = "timeout"
            record.latency = time.monotonic() - start
            self.records.append(record)
            if record.outcome == "refused":
                await asyncio.sleep(0.02)  # the daemon is down: a client would back off too
            elif self.rate:
                await asyncio.sleep(max(0.0, self.connections / self.rate - record.latency))


def start_load(port: int, connections: int, rate: float = 0.0) -> tuple[Load, Any]:
    """Run a Load on its own event loop in a thread; returns (load, thread)."""
    import threading

    import uvloop

    load = Load(port, connections, rate=rate)
    ready = threading.Event()
    box: dict[str, asyncio.AbstractEventLoop] = {}

    def main() -> None:
        loop = uvloop.new_event_loop()
        box["loop"] = loop
        ready.set()
        loop.run_until_complete(load.run())
        loop.close()

    thread = threading.Thread(target=main, name="load", daemon=True)
    thread.start()
    ready.wait()
    load._loop = box["loop"]  # type: ignore[attr-defined]
    return load, thread


def stop_load(load: Load, thread: Any) -> None:
    load._loop.call_soon_threadsafe(load.stop)  # type: ignore[attr-defined]
    thread.join(timeout=120)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def kill_group_leader(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, Python {sys.version.split()[0]}"
