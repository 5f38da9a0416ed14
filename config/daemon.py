"""The `[daemon]` table: where state, logs and the control socket live."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path

from config.model import DaemonSpec
from config.table import Table

# AF_UNIX paths are capped at 108 bytes on Linux (104 on macOS); stay clear of both.
MAX_SOCKET_PATH = 100

_ALLOWED = ("state_dir", "socket", "log_max_size", "log_keep", "log_tail_lines")


def read_daemon(top: Table, config_path: Path) -> DaemonSpec:
    """DaemonSpec for an absolute `config_path`; relative paths hang off its directory."""
    table = top.table("daemon", _ALLOWED) or Table({}, "daemon", top.file, _ALLOWED)
    root = config_path.parent
    state_dir = root / Path(table.text("state_dir", ".corral")).expanduser()
    if table.has("socket"):
        socket = root / Path(table.text("socket", "")).expanduser()
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            raise table.error(
                "socket",
                f"expected a path of at most {MAX_SOCKET_PATH} bytes (the AF_UNIX limit), "
                f"got {socket} ({len(os.fsencode(socket))} bytes)",
            )
    else:
        socket = default_socket(state_dir, config_path)
    size = table.size("log_max_size", 10 * 1024 * 1024)
    if size <= 0:
        raise table.expected("log_max_size", 'a size > 0 like "10MB"')
    return DaemonSpec(
        state_dir=state_dir,
        socket=socket,
        log_max_bytes=size,
        log_keep=table.integer("log_keep", 5),
        log_tail_lines=table.integer("log_tail_lines", 1000),
    )


def default_socket(state_dir: Path, config_path: Path) -> Path:
    """<state_dir>/corral.sock, or a short per-config path in /tmp when that is too long."""
    socket = state_dir / "corral.sock"
    if len(os.fsencode(socket)) <= MAX_SOCKET_PATH:
        return socket
    # Literal /tmp, not $TMPDIR: macOS's TMPDIR alone is ~50 bytes and would defeat the point.
    digest = hashlib.sha256(os.fsencode(config_path)).hexdigest()[:12]
    return Path(f"/tmp/corral-{os.getuid()}/{digest}.sock")


def socket_of(config_path: Path) -> Path:
    """The control socket of a config that may not load (best effort, no validation).

    The CLI uses this to reach a running daemon while the file on disk is broken.
    """
    state_dir, socket = ".corral", None
    try:
        with open(config_path, "rb") as f:
            daemon = tomllib.load(f).get("daemon", {})
        if isinstance(daemon, dict):
            state_dir = str(daemon.get("state_dir", state_dir))
            socket = daemon.get("socket")
    except (OSError, tomllib.TOMLDecodeError):
        pass
    root = config_path.parent
    if isinstance(socket, str):
        return root / Path(socket).expanduser()
    return default_socket(root / Path(state_dir).expanduser(), config_path)
