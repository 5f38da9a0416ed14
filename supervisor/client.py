"""A thin client for the control API (the CLI's only way to talk to a daemon).

Plain `http.client` over AF_UNIX: the CLI runs once per command, and importing aiohttp
(~0.25 s, mostly building TLS contexts it would never use here) doubled `corral ps`'s time.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .errors import ControlError, NoDaemon, WrongDaemon

# Sent with every request when the CLI acts for a config file: a daemon serving another one
# answers 421 instead of acting (two projects given one `socket` path must not stop each other).
CONFIG_HEADER = "Corral-Config"

Params = Mapping[str, str] | Sequence[tuple[str, str]]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("corral", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """HTTP/JSON over the daemon's Unix socket."""

    def __init__(
        self, socket_path: Path, *, config: Path | None = None, timeout: float | None = 300.0
    ) -> None:
        self.socket_path = socket_path
        self.config = config  # the config file the daemon must serve (None: any)
        self._timeout = timeout

    def _unreachable(self, exc: Exception) -> ControlError:
        if not self.socket_path.exists():
            return NoDaemon(f"no corral daemon is running (no socket at {self.socket_path})")
        if isinstance(exc, ConnectionRefusedError):
            return NoDaemon(f"no corral daemon is running (stale socket at {self.socket_path})")
        return NoDaemon(f"cannot reach the corral daemon at {self.socket_path}: {exc}")

    def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Params | None,
        timeout: float | None,
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        if params:
            path = f"{path}?{urlencode(params)}"
        conn = _UnixConnection(self.socket_path, timeout)
        headers = {}
        if self.config is not None:
            headers[CONFIG_HEADER] = quote(os.fsencode(self.config))
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from exc

    @staticmethod
    def _error(resp: http.client.HTTPResponse, raw: bytes) -> ControlError:
        try:
            message = json.loads(raw).get("error")
        except (ValueError, AttributeError):
            message = None
        kind = WrongDaemon if resp.status == 421 else ControlError
        return kind(message or f"HTTP {resp.status}: {raw[:200].decode(errors='replace')}")

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Params | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """One request; `timeout` (seconds) overrides the client's for calls that wait."""
        conn, resp = self._send(method, path, body, params, timeout or self._timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(
                f"the daemon at {self.socket_path} stopped answering: {exc}"
            ) from exc
        finally:
            conn.close()
        if resp.status >= 400:
            raise self._error(resp, raw)
        try:
            return json.loads(raw)
        except ValueError:
            raise ControlError(
                f"{self.socket_path} answered {raw[:80]!r}: not a corral daemon?"
            ) from None

    def stream(self, path: str, params: Params | None = None) -> Iterator[dict[str, Any]]:
        """Yield NDJSON objects until the daemon ends the stream."""
        conn, resp = self._send("GET", path, None, params, None)
        try:
            if resp.status >= 400:
                raise self._error(resp, resp.read())
            for raw in resp:
                if raw.strip():
                    yield json.loads(raw)
            # The daemon ends a stream with the last chunk (chunk_left becomes None); a daemon
            # killed mid-stream just closes, which http.client reads as a quiet end.
            if resp.chunked and resp.chunk_left is not None:
                raise ControlError(f"the daemon at {self.socket_path} went away mid-stream")
        except (OSError, http.client.HTTPException) as exc:
            # The daemon died mid-stream (kill -9, OOM): one line, not a traceback.
            raise ControlError(f"the daemon at {self.socket_path} went away: {exc!r}") from None
        finally:
            conn.close()

    def alive(self) -> bool:
        """True if our daemon answers; WrongDaemon if another config's does."""
        try:
            self.call("GET", "/v1/status")
        except NoDaemon:
            return False
        return True
