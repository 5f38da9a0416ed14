"""The `[daemon]` table: where state, logs and the control socket live.

State is per config file, so that two configs in one directory never share a daemon:
`corral.toml` keeps the short `.corral/`, any other file `x.toml` gets `.corral/configs/x.toml/`.

Under the unit `corral systemd-unit` writes (which sets CORRAL_UNIT), the defaults are the
directories systemd made for it instead: $STATE_DIRECTORY (state, venvs), $LOGS_DIRECTORY,
$RUNTIME_DIRECTORY (the socket) and $CACHE_DIRECTORY (uv's and pip's caches). Explicit
[daemon] keys win either way. The CLI, which does not run in the unit's environment, finds
such a daemon's socket where RuntimeDirectory= puts it (`unit_socket`), so `corral ps` in the
project directory talks to the unit, but only if the installed unit serves that very config.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
import unicodedata
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
        socket = unit_socket(project, config_path, environ) or default_socket(
            state_dir, config_path, environ
        )
    logs_dir = table.filepath("logs_dir", unit.get("logs") or str(state_dir / "logs"), root)
    size = table.size("log_max_size", 10 * 1024 * 1024)
    if not 0 < size <= MAX_LOG_SIZE:
        raise table.expected("log_max_size", 'a size > 0 and at most "1TB", like "10MB"')
    # A system unit has no $HOME: uv and pip would cache in /root/.cache, which ProtectHome=
    # makes read-only. Outside a unit they keep the user's own cache.
    cache_dir = Path(unit.get("cache") or state_dir / "cache") if unit else None
    return DaemonSpec(
        state_dir=state_dir,
        cache_dir=cache_dir,
        socket=socket,
        logs_dir=logs_dir,
        log_max_bytes=size,
        log_keep=table.integer("log_keep", 5, maximum=MAX_LOG_KEEP),
        log_tail_lines=table.integer("log_tail_lines", 1000, maximum=MAX_TAIL_LINES),
    )


def unit_directories(environ: Mapping[str, str]) -> dict[str, str]:
    """{"state", "logs", "runtime", "cache"}: the directories systemd made for our unit, if we run in it.

    Only with CORRAL_UNIT set: a daemon started from a shell inside some other unit inherits
    that unit's $STATE_DIRECTORY, which is not ours."""
    if not environ.get(UNIT_ENV):
        return {}
    found = {}
    for key, name in (
        ("state", "STATE_DIRECTORY"),
        ("logs", "LOGS_DIRECTORY"),
        ("runtime", "RUNTIME_DIRECTORY"),
        ("cache", "CACHE_DIRECTORY"),
    ):
        if value := environ.get(name, "").split(":")[0]:
            found[key] = value
    return found


def unit_name(project: str, config_path: Path | None = None) -> str:
    """The systemd unit of a config, without ".service": "corral-shop" for corral.toml,
    "corral-shop-staging" for staging.toml (two configs of a project are two units)."""
    name = _slug(project)
    if config_path is not None and config_path.name != DEFAULT_CONFIG:
        name += "-" + _slug(config_path.stem)
    return "corral-" + name


def _slug(text: str) -> str:
    """`text` as a unit name part: "Shop Stack" → "shop-stack", "Café" → "cafe", and a short
    digest for what has no ASCII spelling ("商店" → "p-1d5ea4c2"), so no two names collide."""
    decomposed = unicodedata.normalize("NFKD", text)
    slug = _UNIT_NAME.sub("-", decomposed.encode("ascii", "ignore").decode().lower()).strip("-")
    if slug and not any(ord(c) > 127 and not unicodedata.combining(c) for c in decomposed):
        return slug
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{slug or 'p'}-{digest}"


def runtime_subdir(project: str, config_path: Path | None = None) -> str:
    """RuntimeDirectory= (and State-, Logs-, CacheDirectory=) of a config's unit: "corral/shop"."""
    return "corral/" + unit_name(project, config_path).removeprefix("corral-")


def unit_socket(project: str, config_path: Path, environ: Mapping[str, str]) -> Path | None:
    """The socket of the systemd unit (system or user) that serves `config_path`, if one runs.

    Only that unit's: another checkout of a project with the same name (same unit name, same
    /run/corral/<name>) is not this config's daemon. The unit file says which config it
    serves (`X-Corral-Config=`, written by `corral systemd-unit`)."""
    if not project:
        return None
    name = unit_name(project, config_path)
    places = [(Path("/run"), SYSTEM_UNIT_DIRS)] if os.geteuid() == 0 else []
    places.append(
        (
            Path(environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"),
            user_unit_dirs(environ),
        )
    )
    for base, unit_dirs in places:
        candidate = base / runtime_subdir(project, config_path) / "corral.sock"
        try:
            if not stat.S_ISSOCK(candidate.lstat().st_mode):
                continue
        except OSError:
            continue
        if any(unit_config(d / f"{name}.service") == config_path for d in unit_dirs):
            return candidate
    return None


# Where systemd looks for units, in its order (systemd.unit(5)), less the generated ones.
SYSTEM_UNIT_DIRS = tuple(
    Path(p)
    for p in (
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    )
)
CONFIG_KEY = "X-Corral-Config"  # systemd ignores X- keys: ours, naming the config a unit serves
_WRITTEN_FOR = re.compile(r"# \S+: written by `corral systemd-unit(?: --socket)?` for (.+)")


def user_unit_dirs(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """The user manager's unit directories, $XDG_CONFIG_HOME/systemd/user first."""
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    data_home = Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return (
        config_home / "systemd" / "user",
        Path("/etc/systemd/user"),
        data_home / "systemd" / "user",
        Path("/usr/lib/systemd/user"),
    )


def unit_config(unit_file: Path) -> Path | None:
    """The config a unit file written by `corral systemd-unit` serves (None: not one of ours)."""
    try:
        text = unit_file.read_text(errors="replace")
    except OSError:
        return None
    header = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == CONFIG_KEY:
            return Path(value.strip())
        if header is None and (match := _WRITTEN_FOR.fullmatch(line)):
            header = match.group(1)
    # Units written before X-Corral-Config= existed name their config in the first line only.
    return Path(header) if header else None


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
    return unit_socket(project, config_path, os.environ) or default_socket(
        root / Path(state_dir).expanduser(), config_path
    )
