"""The systemd units `corral systemd-unit` writes: a service (and a socket, with --socket).

Pure text from a plan; `install` writes it where systemd looks, as `pm2 startup` does, and
says which systemctl commands come next. The service is Type=notify (READY=1 once the start
has converged; until then the daemon extends TimeoutStartSec= itself), reloads on SIGHUP,
lets the daemon stop its instances itself (KillMode=mixed: SIGTERM to the daemon alone,
SIGKILL to what is left after TimeoutStopSec) and gets the directories systemd makes for it:
RuntimeDirectory (the control socket), StateDirectory (venvs, state), LogsDirectory and
CacheDirectory (uv's and pip's caches: a system unit has no $HOME); the daemon uses them when
CORRAL_UNIT is set (config/daemon.py). Delegate=yes hands it a cgroup of its own, for
per-instance cgroups and their caps (supervisor/cgroup.py).

One unit per config: its name has the config file's stem unless it is corral.toml, and
X-Corral-Config= names the config it serves, so that the CLI uses its socket for that config
only and `install` does not silently replace another config's unit. Every value written has
`%` doubled and no control characters (a newline would start a directive of its own).

Hardening: a system unit runs as root (so that services may set `user`, and hard rlimits may
be raised) behind NoNewPrivileges, ProtectSystem=strict (with ReadWritePaths for the project
and any daemon directory outside systemd's own), PrivateTmp and ProtectHome, both decided from
every path the daemon needs (a private /tmp would hide a socket or state there; a hidden home
would hide an interpreter or logs in it, so it is made read-only instead). A user unit gets
NoNewPrivileges only: the namespace-based settings need unprivileged user namespaces in a user
manager, which many hosts do not allow, and a project in $HOME is the point of a user unit.
The socket unit is not PartOf= the service: a service restart must not close the listener.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import config
from config.daemon import CONFIG_KEY, UNIT_ENV, runtime_subdir, unit_config, unit_name
from config.model import DaemonSpec, Plan

from .errors import SupervisorError

WATCHDOG = 30  # seconds: the daemon pings every 15 s from its event loop
RESTART_SEC = 2
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
TMPS = (Path("/tmp"), Path("/var/tmp"))
STOP_MARGIN = 30  # seconds on top of the services' own drain and stop timeouts
# The start-up timeout before the daemon's first EXTEND_TIMEOUT_USEC (supervisor/systemd.py):
# while the start converges it keeps asking for more, from its event loop, so a slow service
# (start_timeout = "5m") or a venv build is waited for, and a wedged daemon is not.
START_TIMEOUT = 90


@dataclass(frozen=True, slots=True)
class UnitFile:
    name: str  # "corral-shop.service"
    text: str


def executable() -> list[str]:
    """How systemd should start Corral: the `corral` script beside this interpreter if there
    is one (a venv's bin/), else the interpreter with -m supervisor."""
    script = Path(sys.executable).parent / "corral"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "supervisor"]


def units(plan: Plan, *, user: bool, socket: bool, argv: list[str] | None = None) -> list[UnitFile]:
    """The service unit, and the socket unit with `socket`."""
    if user and os.geteuid() != 0:
        for service in plan.services.values():
            key = "user" if service.user is not None else "group" if service.group else None
            if key is not None:
                raise SupervisorError(
                    f"{plan.path}: services.{service.name}.{key}: a user unit runs as you, "
                    "not root, so it cannot run a service as another user; use the system "
                    "unit (without --user) or remove user/group"
                )
    name = unit_name(plan.project, plan.path)
    files = [UnitFile(f"{name}.service", service_unit(plan, user=user, socket=socket, argv=argv))]
    if socket:
        files.append(UnitFile(f"{name}.socket", socket_unit(plan)))
    return files


def service_unit(
    plan: Plan, *, user: bool, socket: bool = False, argv: list[str] | None = None
) -> str:
    name = unit_name(plan.project, plan.path)
    sub = runtime_subdir(plan.project, plan.path)
    program = argv or executable()
    command = [*program, "daemon", "-f", str(plan.path)]
    where = _text(str(plan.path), "the config's path")
    unit = [
        f"# {name}.service: written by `corral systemd-unit` for {where}",
        "[Unit]",
        f"Description=Corral: {_text(plan.project, 'the project name')} ({where})",
        f"{CONFIG_KEY}={where}",  # which config this unit serves: the CLI finds it by this
    ]
    if not user:  # (a user unit WantedBy=default.target must not also be After= it)
        unit += ["Wants=network-online.target", "After=network-online.target"]
    if socket:
        unit += [f"Requires={name}.socket", f"After={name}.socket"]
    stop = STOP_MARGIN + sum(s.drain_timeout + s.stop_timeout for s in plan.services.values())
    unit += [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=" + " ".join(_quote(arg.replace("$", "$$")) for arg in command),
        "# Until READY=1 the daemon extends this while its start converges (EXTEND_TIMEOUT_USEC).",
        f"TimeoutStartSec={START_TIMEOUT}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# SIGTERM goes to the daemon alone: it drains and stops every instance in order;",
        "# whatever is left when TimeoutStopSec runs out is SIGKILLed.",
        "KillMode=mixed",
        f"TimeoutStopSec={round(stop)}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"WatchdogSec={WATCHDOG}",
        f"Environment={UNIT_ENV}=%n",
        f"WorkingDirectory={_text(str(plan.path.parent), 'the config directory')}",
        f"RuntimeDirectory={sub}",
        "RuntimeDirectoryMode=0700",
        f"StateDirectory={sub}",
        "StateDirectoryMode=0700",
        f"LogsDirectory={sub}",
        "LogsDirectoryMode=0750",
        "# uv's and pip's caches: a system unit has no $HOME to keep them in.",
        f"CacheDirectory={sub}",
        "CacheDirectoryMode=0700",
        "# A cgroup of its own: one per instance, and cgroup caps where controllers exist.",
        "Delegate=yes",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
    ]
    if not user:
        seen = _seen(plan, sub)
        needed = _needed(plan, seen, program)
        unit += [
            "ProtectSystem=strict",
            "ReadWritePaths=" + " ".join(_path(p) for p in _writable(plan, seen, sub)),
            *_private_tmp(needed),
            *_protect_home(needed),
            "ProtectKernelModules=yes",
        ]
    unit += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}"]
    return "\n".join(unit) + "\n"


def socket_unit(plan: Plan) -> str:
    """ListenStream= for every [proxy] listen address, handed over as LISTEN_FDNAMES=proxy."""
    name = unit_name(plan.project, plan.path)
    if plan.proxy is None:
        raise SupervisorError(f"{plan.path}: no [proxy], so there is no socket to activate")
    where = _text(str(plan.path), "the config's path")
    lines = [
        f"# {name}.socket: written by `corral systemd-unit --socket` for {where}",
        "# Not PartOf= the service: `systemctl restart` of the service leaves the socket",
        "# listening, so clients wait in its backlog instead of being refused.",
        "[Unit]",
        f"Description=Corral proxy sockets: {_text(plan.project, 'the project name')}",
        f"{CONFIG_KEY}={where}",
        "",
        "[Socket]",
    ]
    v6 = False
    for host, port in plan.proxy.listen:
        where = f"{plan.path}: proxy.listen {host}:{port}"
        if port == 0:
            raise SupervisorError(f"{where}: a socket unit needs a fixed port, not 0")
        try:
            address = ipaddress.ip_address(host or "0.0.0.0")
        except ValueError:
            raise SupervisorError(
                f"{where}: a socket unit needs an IP address, not the name {host!r}"
            ) from None
        v6 = v6 or address.version == 6
        lines.append(f"ListenStream={f'[{address}]' if address.version == 6 else address}:{port}")
    if v6:
        lines.append("BindIPv6Only=ipv6-only")  # as the proxy binds: [::] does not take IPv4
    lines += [
        "FileDescriptorName=proxy",
        "Backlog=2048",
        "NoDelay=yes",
        f"Service={name}.service",
        "",
        "[Install]",
        "WantedBy=sockets.target",
    ]
    return "\n".join(lines) + "\n"


def unit_dir(user: bool, environ: Mapping[str, str] = os.environ) -> Path:
    """Where `--install` writes: /etc/systemd/system, or the user's systemd/user directory."""
    if not user:
        return Path("/etc/systemd/system")
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "systemd" / "user"


def install(
    files: list[UnitFile], directory: Path, user: bool, *, config_path: Path, force: bool = False
) -> list[str]:
    """Write `files` into `directory`; the commands to run next.

    A unit file already there for another config (another checkout or config file of a
    project with this name) is not replaced without `force`: it would silently become this
    config's unit, with the other one's state directory. One for this config is updated."""
    for f in files:
        target = directory / f.name
        if force or not target.exists():
            continue
        owner = unit_config(target)
        if owner == config_path or _read(target) == f.text:
            continue
        serves = f"the unit for {owner}" if owner else "not a unit written for this config"
        raise SupervisorError(
            f"{target} exists and is {serves}; --force replaces it (or give this config "
            "its own unit name: another `project`, or another config file name)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for f in files:
            (directory / f.name).write_text(f.text)
    except OSError as exc:
        hint = "" if user or os.geteuid() == 0 else " (a system unit needs root; or use --user)"
        raise SupervisorError(f"cannot write {directory}: {exc.strerror or exc}{hint}") from exc
    systemctl = "systemctl --user" if user else "systemctl"
    start = files[-1].name  # the socket, when there is one: it starts the service
    commands = [f"{systemctl} daemon-reload", f"{systemctl} enable --now {start}"]
    if user:
        # Without lingering, a user manager (and the stack) stops at logout.
        commands.append(f"loginctl enable-linger {os.environ.get('USER') or _login()}")
    return commands


def _seen(plan: Plan, sub: str) -> DaemonSpec:
    """The plan's [daemon] directories as the unit will see them (loaded in its environment)."""
    fake = {**os.environ, UNIT_ENV: "x", **_systemd_dirs(sub)}
    try:
        return config.load(plan.path, environ=fake).daemon
    except config.ConfigError:
        return plan.daemon


def _systemd_dirs(sub: str) -> dict[str, str]:
    """The directories systemd makes for a system unit with `sub` as their name."""
    return {
        "STATE_DIRECTORY": f"/var/lib/{sub}",
        "LOGS_DIRECTORY": f"/var/log/{sub}",
        "RUNTIME_DIRECTORY": f"/run/{sub}",
        "CACHE_DIRECTORY": f"/var/cache/{sub}",
    }


def _writable(plan: Plan, seen: DaemonSpec, sub: str) -> list[Path]:
    """The project, the services' working directories and any daemon directory outside
    systemd's own."""
    places = [plan.path.parent, *(s.cwd for s in plan.services.values())]
    places += [seen.state_dir, seen.logs_dir, seen.socket.parent]
    if seen.cache_dir is not None:
        places.append(seen.cache_dir)
    systemd_own = [Path(p) for p in _systemd_dirs(sub).values()]
    kept: list[Path] = []
    for place in sorted({Path(os.path.abspath(p)) for p in places}):
        if any(_within(place, o) for o in systemd_own):
            continue
        if any(_within(place, k) for k in kept):
            continue  # inside one already listed
        kept.append(place)
    return kept


def _needed(plan: Plan, seen: DaemonSpec, program: list[str]) -> list[Path]:
    """Every path the daemon reads, runs or writes: Corral itself and its interpreter, the
    project, the services' working directories and interpreters, the [daemon] directories.
    Each as given and resolved (a symlink in /usr/local/bin may point into a home)."""
    places = [Path(program[0]), _interpreter(Path(program[0])), plan.path.parent]
    for service in plan.services.values():
        places.append(service.cwd)
        if os.path.isabs(service.command[0]):  # (a bare name is found on PATH, or in the venv)
            places.append(Path(service.command[0]))
        if service.venv and (python := shutil.which(service.python)):
            places.append(Path(python))
    places += [seen.state_dir, seen.logs_dir, seen.socket.parent]
    if seen.cache_dir is not None:
        places.append(seen.cache_dir)
    absolute = [Path(os.path.abspath(p)) for p in places]
    return list(dict.fromkeys([*absolute, *(Path(os.path.realpath(p)) for p in absolute)]))


def _interpreter(program: Path) -> Path:
    """What runs `program`: the interpreter its `#!` line names, or itself (a binary)."""
    try:
        with program.open("rb") as f:
            head = f.readline(4096)
    except OSError:
        return program
    words = head[2:].split() if head.startswith(b"#!") else []
    return Path(os.fsdecode(words[0])) if words else program


def _private_tmp(needed: list[Path]) -> list[str]:
    """PrivateTmp=yes, unless something the daemon needs is under /tmp or /var/tmp: a private
    /tmp would hide it (a socket the CLI cannot see, state wiped at every stop)."""
    inside = [p for p in needed if any(_within(p, t) for t in TMPS)]
    if inside:
        return [
            f"# No PrivateTmp=: {_text(str(inside[0]), 'a path')} is under a temporary directory."
        ]
    return ["PrivateTmp=yes"]


def _protect_home(needed: list[Path]) -> list[str]:
    """ProtectHome=yes, or read-only when something the daemon needs is under a home (hidden,
    it could not run; ReadWritePaths= makes the writable ones writable again)."""
    inside = [p for p in needed if any(_within(p, h) for h in HOMES)]
    if inside:
        return [
            f"# ProtectHome=read-only, not yes: {_listed(inside)} under a home directory.",
            "ProtectHome=read-only",
        ]
    return ["ProtectHome=yes"]


def _listed(paths: list[Path]) -> str:
    """ "/tmp/x is", "/tmp/x, /tmp/y are": for a comment in the unit."""
    words = ", ".join(_text(str(p), "a path") for p in paths)
    return f"{words} {'is' if len(paths) == 1 else 'are'}"


def _within(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _text(value: str, what: str) -> str:
    """`value` for a unit file line: % doubled (systemd expands specifiers in most settings)
    and no control characters, which would end the line and start a directive of their own."""
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise SupervisorError(
            f"cannot write a systemd unit: {what} {value!r} contains the control character "
            f"{bad!r} (rename it, or set `project` in the config)"
        )
    return value.replace("%", "%%")


def _path(path: Path) -> str:
    return _quote(str(path))


def _quote(arg: str) -> str:
    """One word of a unit file: % doubled (specifiers), quoted when it has spaces or quotes
    (ExecStart's callers double $ too: systemd expands $VAR there)."""
    arg = _text(arg, "the path")
    if arg and not any(c in arg for c in " \t\"'\\;$"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _login() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
