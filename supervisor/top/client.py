"""An async client of the control API for `corral top` (aiohttp over the Unix socket).

The CLI's client is synchronous `http.client`, right for one request per command; a live view
holds two streams open (stats and logs) while it sends orders, so it needs an event loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import ControlError

BASE = "http://corral"
# An order such as a rolling restart answers when it is done; the CLI waits as long.
ORDER_TIMEOUT = 300.0


class ControlClient:
    """One aiohttp session on the daemon's socket; `close()` it when done."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket))
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One request; the daemon's `{"error": ...}` becomes a ControlError with its text."""
        timeout = aiohttp.ClientTimeout(total=ORDER_TIMEOUT)
        try:
            async with self._http().request(
                method, BASE + path, json=body, timeout=timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ControlError(f"cannot reach the daemon at {self.socket}: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ControlError(message or f"HTTP {status}: {raw[:200].decode(errors='replace')}")
        return data

    async def _lines(
        self, path: str, params: Mapping[str, str] | list[tuple[str, str]], idle: float
    ) -> AsyncIterator[bytes]:
        # `idle`: a stream that says nothing for that long is dead (the daemon ticks every
        # interval), even if the socket never reports it.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=idle)
        try:
            async with self._http().get(BASE + path, params=params, timeout=timeout) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    raise ControlError(raw[:200].decode(errors="replace"))
                async for line in resp.content:
                    yield line
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ControlError(f"lost the daemon at {self.socket}: {exc}") from exc

    async def stats(self, interval: float, events: int = 50) -> AsyncIterator[tuple[str, Any]]:
        """(kind, data) for each server-sent event of `GET /v1/stats?follow=1`."""
        params = {"follow": "1", "interval": f"{interval:g}", "events": str(events)}
        kind, data = "message", ""
        async for raw in self._lines("/v1/stats", params, idle=max(10.0, interval * 5)):
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                yield kind, json.loads(data)
                kind, data = "message", ""

    async def logs(self, target: str | None, lines: int) -> AsyncIterator[dict[str, Any]]:
        """Log records of `target` (a service, or all), history first, then as they come."""
        params = [("n", str(lines)), ("follow", "1")]
        if target:
            params.append(("target", target))
        async for raw in self._lines("/v1/logs", params, idle=24 * 3600.0):
            if raw.strip():
                yield json.loads(raw)
