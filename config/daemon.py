"""The `[daemon]` table: where state, logs and the control socket live.

State is per config file, so that two configs in one directory never share a daemon:
`corral.toml` keeps the short `.corral/`, any other file `x.toml` gets `.corral/configs/x.toml/`.

Under the unit `corral systemd-unit` writes (which sets CORRAL_UNIT), the defaults are the
directories systemd made for it instead: $STATE_DIRECTORY (state, venvs), $LOGS_DIRECTORY and
$RUNTIME_DIRECTORY (the socket). Explicit [daemon] keys win either way. The CLI, which does
not run in the unit's environment, finds such a daemon's socket where RuntimeDirectory= puts
it (`unit_socket`), so `corral ps` in the project directory talks to the unit.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

from config.errors import ConfigError
from config.model import DaemonSpec
from config.table import Table

# AF_UNIX paths are capped at 108 bytes on Linux (104 on macOS); stay clear of both.
MAX_SOCKET_PATH = 100
DEFAULT_CONFIG = "corral.toml"
# Sanity bounds: rotation walks every kept file, and the tail is held in memory per instance.
MAX_LOG_KEEP = 1000
MAX_TAIL_LINES = 100_000
MAX_LOG_SIZE = 1 << 40  # 1 TiB

_ALLOWED = ("state_dir", "socket", "logs_dir", "log_max_size", "log_keep", "log_tail_lines")
UNIT_ENV = "CORRAL_UNIT"  # set by the generated systemd unit (Environment=CORRAL_UNIT=%n)
_UNIT_NAME = re.compile(r"[^a-z0-9_-]+")


def read_daemon(
    top: Table, config_path: Path, environ: Mapping[str, str] | None = None, project: str = ""
) -> DaemonSpec:
    """DaemonSpec for an absolute `config_path`; relative paths hang off its directory."""
    environ = os.environ if environ is None else environ
    table = top.table("daemon", _ALLOWED) or Table({}, "daemon", top.file, _ALLOWED)
    root = config_path.parent
    unit = unit_directories(environ)
    state_dir = table.filepath(
        "state_dir", unit.get("state") or default_state_dir(config_path), root
    )
    st = table.stat("state_dir", state_dir)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise table.error(
            "state_dir", f"{state_dir} is not a directory" + _explicit(table, "state_dir")
        )
    resolved = table.join("state_dir", str(state_dir), root, resolve=True)
    if resolved == root or resolved in root.parents:
        # It would be chmod-ed 0700, and watch mode (which ignores it) would see nothing.
        raise table.error(
            "state_dir", f"expected a directory of its own, not {resolved} (holds the config)"
        )
    if table.has("socket"):
        if not table.text("socket", ""):
            raise table.expected("socket", 'a path like ".corral/corral.sock"')
        socket = table.filepath("socket", "", root)
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            raise table.error(
                "socket",
                f"expected a path of at most {MAX_SOCKET_PATH} bytes (the AF_UNIX limit), "
                f"got {socket} ({len(os.fsencode(socket))} bytes)",
            )
    elif "runtime" in unit:
        socket = Path(unit["runtime"]) / "corral.sock"
    else:
        socket = unit_socket(project, environ) or default_socket(state_dir, config_path, environ)
    logs_dir = table.filepath("logs_dir", unit.get("logs") or str(state_dir / "logs"), root)
    size = table.size("log_max_size", 10 * 1024 * 1024)
    if not 0 < size <= MAX_LOG_SIZE:
        raise table.expected("log_max_size", 'a size > 0 and at most "1TB", like "10MB"')
    return DaemonSpec(
        state_dir=state_dir,
        socket=socket,
        logs_dir=logs_dir,
        log_max_bytes=size,
        log_keep=table.integer("log_keep", 5, maximum=MAX_LOG_KEEP),
        log_tail_lines=table.integer("log_tail_lines", 1000, maximum=MAX_TAIL_LINES),
    )


def unit_directories(environ: Mapping[str, str]) -> dict[str, str]:
    """{"state", "logs", "runtime"}: the directories systemd made for our unit, if we run in it.

    Only with CORRAL_UNIT set: a daemon started from a shell inside some other unit inherits
    that unit's $STATE_DIRECTORY, which is not ours."""
    if not environ.get(UNIT_ENV):
        return {}
    found = {}
    for key, name in (("state", "STATE_DIRECTORY"), ("logs", "LOGS_DIRECTORY")):
        if value := environ.get(name, "").split(":")[0]:
            found[key] = value
    if value := environ.get("RUNTIME_DIRECTORY", "").split(":")[0]:
        found["runtime"] = value
    return found


def unit_name(project: str) -> str:
    """The systemd unit of a project, without ".service": "corral-shop"."""
    return "corral-" + (_UNIT_NAME.sub("-", project.lower()).strip("-") or "project")


def runtime_subdir(project: str) -> str:
    """RuntimeDirectory= (and StateDirectory=, LogsDirectory=) of a project's unit: "corral/shop"."""
    return "corral/" + unit_name(project).removeprefix("corral-")


def unit_socket(project: str, environ: Mapping[str, str]) -> Path | None:
    """The socket of this project's systemd unit (system or user), if one is running."""
    if not project:
        return None
    bases = [Path("/run")] if os.geteuid() == 0 else []
    bases.append(Path(environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"))
    for base in bases:
        candidate = base / runtime_subdir(project) / "corral.sock"
        try:
            if stat.S_ISSOCK(candidate.lstat().st_mode):
                return candidate
        except OSError:
            continue
    return None


def _explicit(table: Table, name: str) -> str:
    return "" if table.has(name) else " (the default state dir; set [daemon] state_dir)"


def default_state_dir(config_path: Path) -> str:
    """`.corral` for corral.toml, `.corral/configs/<file name>` for any other config file."""
    if config_path.name == DEFAULT_CONFIG:
        return ".corral"
    return f".corral/configs/{config_path.name}"


def tmp_socket_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$CORRAL_TMPDIR/corral-<uid>` (default /tmp), where sockets with long paths go."""
    environ = os.environ if environ is None else environ
    # Literal /tmp, not $TMPDIR: macOS's TMPDIR alone is ~50 bytes and would defeat the point.
    # CORRAL_TMPDIR moves it, as TMUX_TMPDIR does for tmux.
    base = environ.get("CORRAL_TMPDIR") or "/tmp"
    return Path(base) / f"corral-{os.geteuid()}"


def default_socket(
    state_dir: Path, config_path: Path, environ: Mapping[str, str] | None = None
) -> Path:
    """<state_dir>/corral.sock, or a short per-config path in /tmp when that is too long."""
    socket = state_dir / "corral.sock"
    if len(os.fsencode(socket)) <= MAX_SOCKET_PATH:
        return socket
    digest = hashlib.sha256(os.fsencode(config_path)).hexdigest()[:12]
    return tmp_socket_dir(environ) / f"{digest}.sock"


def socket_of(config_path: Path) -> Path:
    """The control socket of a config that may not load (best effort, no validation).

    The CLI uses this to reach a running daemon while the file on disk is broken. A file
    that cannot be read at all is an error: falling back to the directory's default daemon
    would act on another config's daemon.
    """
    config_path = config_path.resolve()
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(config_path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(config_path, "", f"cannot read: {exc.strerror or exc}") from None
    state_dir, socket = default_state_dir(config_path), None
    project = config_path.parent.name
    try:
        data = tomllib.loads(raw.decode("utf-8"))
        daemon = data.get("daemon", {})
        if isinstance(data.get("project"), str):
            project = data["project"]
    except (ValueError, RecursionError):  # not UTF-8, not TOML, or absurd: use the defaults
        daemon = {}
    if isinstance(daemon, dict):
        if isinstance(daemon.get("state_dir"), str):
            state_dir = daemon["state_dir"]
        socket = daemon.get("socket")
    root = config_path.parent
    if isinstance(socket, str):
        return root / Path(socket).expanduser()
    return unit_socket(project, os.environ) or default_socket(
        root / Path(state_dir).expanduser(), config_path
    )
