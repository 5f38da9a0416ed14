"""A thin client for the control API (the CLI's only way to talk to a daemon)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from .errors import ControlError


class Client:
    """HTTP/JSON over the daemon's Unix socket."""

    def __init__(self, socket_path: Path, *, timeout: float | None = 300.0) -> None:
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def _session(self, timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientSession:
        connector = aiohttp.UnixConnector(path=str(self.socket_path))
        return aiohttp.ClientSession(connector=connector, timeout=timeout or self._timeout)

    def _unreachable(self, exc: Exception) -> ControlError:
        if not self.socket_path.exists():
            return ControlError(f"no corral daemon is running (no socket at {self.socket_path})")
        return ControlError(f"cannot reach the corral daemon at {self.socket_path}: {exc}")

    async def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            async with (
                self._session() as session,
                session.request(method, f"http://corral{path}", json=body, params=params) as resp,
            ):
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise ControlError(data.get("error", f"HTTP {resp.status}"))
                return data
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._unreachable(exc) from exc

    async def stream(
        self, path: str, params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield NDJSON objects until the daemon ends the stream."""
        no_limit = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with (
                self._session(no_limit) as session,
                session.get(f"http://corral{path}", params=params) as resp,
            ):
                if resp.status >= 400:
                    data = await resp.json(content_type=None)
                    raise ControlError(data.get("error", f"HTTP {resp.status}"))
                async for raw in resp.content:
                    if raw.strip():
                        yield json.loads(raw)
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._unreachable(exc) from exc

    async def alive(self) -> bool:
        try:
            await self.call("GET", "/v1/status")
        except ControlError:
            return False
        return True
