"""The systemd units `corral systemd-unit` writes: a service (and a socket, with --socket).

Pure text from a plan; `install` writes it where systemd looks, as `pm2 startup` does, and
says which systemctl commands come next. The service is Type=notify (READY=1 once the start
has converged), reloads on SIGHUP, lets the daemon stop its instances itself (KillMode=mixed:
SIGTERM to the daemon alone, SIGKILL to what is left after TimeoutStopSec) and gets the
directories systemd makes for it: RuntimeDirectory (the control socket), StateDirectory
(venvs, state) and LogsDirectory; the daemon uses them when CORRAL_UNIT is set
(config/daemon.py). Delegate=yes hands it a cgroup of its own, for per-instance cgroups and
their caps (supervisor/cgroup.py).

Hardening: a system unit runs as root (so that services may set `user`, and hard rlimits may
be raised) behind NoNewPrivileges, ProtectSystem=strict (with ReadWritePaths for the project
and any daemon directory outside systemd's own), PrivateTmp and ProtectHome (read-only when
the project or the interpreter lives under a home directory: hiding it would hide them). A
user unit gets NoNewPrivileges only: the namespace-based settings need unprivileged user
namespaces in a user manager, which many hosts do not allow, and a project in $HOME is the
point of a user unit.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import config
from config.daemon import UNIT_ENV, runtime_subdir, unit_name
from config.model import Plan

from .errors import SupervisorError

WATCHDOG = 30  # seconds: the daemon pings every 15 s from its event loop
RESTART_SEC = 2
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
TMPS = (Path("/tmp"), Path("/var/tmp"))
STOP_MARGIN = 30  # seconds on top of the services' own drain and stop timeouts


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
    name = unit_name(plan.project)
    files = [UnitFile(f"{name}.service", service_unit(plan, user=user, socket=socket, argv=argv))]
    if socket:
        files.append(UnitFile(f"{name}.socket", socket_unit(plan)))
    return files


def service_unit(
    plan: Plan, *, user: bool, socket: bool = False, argv: list[str] | None = None
) -> str:
    name = unit_name(plan.project)
    sub = runtime_subdir(plan.project)
    command = [*(argv or executable()), "daemon", "-f", str(plan.path)]
    unit = [
        f"# {name}.service: written by `corral systemd-unit` for {plan.path}",
        "[Unit]",
        f"Description=Corral: {plan.project} ({plan.path})",
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
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# SIGTERM goes to the daemon alone: it drains and stops every instance in order;",
        "# whatever is left when TimeoutStopSec runs out is SIGKILLed.",
        "KillMode=mixed",
        f"TimeoutStopSec={round(stop)}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"WatchdogSec={WATCHDOG}",
        f"Environment={UNIT_ENV}=%n",
        f"WorkingDirectory={str(plan.path.parent).replace('%', '%%')}",  # taken as is
        f"RuntimeDirectory={sub}",
        "RuntimeDirectoryMode=0700",
        f"StateDirectory={sub}",
        "StateDirectoryMode=0700",
        f"LogsDirectory={sub}",
        "LogsDirectoryMode=0750",
        "# A cgroup of its own: one per instance, and cgroup caps where controllers exist.",
        "Delegate=yes",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
    ]
    if not user:
        unit += [
            "ProtectSystem=strict",
            "ReadWritePaths=" + " ".join(_path(p) for p in _writable(plan, sub)),
            *_private_tmp(plan),
            f"ProtectHome={_protect_home(plan)}",
            "ProtectKernelModules=yes",
        ]
    unit += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}"]
    return "\n".join(unit) + "\n"


def socket_unit(plan: Plan) -> str:
    """ListenStream= for every [proxy] listen address, handed over as LISTEN_FDNAMES=proxy."""
    name = unit_name(plan.project)
    if plan.proxy is None:
        raise SupervisorError(f"{plan.path}: no [proxy], so there is no socket to activate")
    lines = [
        f"# {name}.socket: written by `corral systemd-unit --socket` for {plan.path}",
        "[Unit]",
        f"Description=Corral proxy sockets: {plan.project}",
        f"PartOf={name}.service",
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


def install(files: list[UnitFile], directory: Path, user: bool) -> list[str]:
    """Write `files` into `directory`; the commands to run next."""
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


def _writable(plan: Plan, sub: str) -> list[Path]:
    """The project, the services' working directories and any daemon directory outside
    systemd's own, as the unit will see them (the plan loaded in the unit's environment)."""
    fake = {
        **os.environ,
        UNIT_ENV: "x",
        "STATE_DIRECTORY": f"/var/lib/{sub}",
        "LOGS_DIRECTORY": f"/var/log/{sub}",
        "RUNTIME_DIRECTORY": f"/run/{sub}",
    }
    places = [plan.path.parent, *(s.cwd for s in plan.services.values())]
    try:
        seen = config.load(plan.path, environ=fake).daemon
    except config.ConfigError:
        seen = plan.daemon
    places += [seen.state_dir, seen.logs_dir, seen.socket.parent]
    systemd_own = [
        Path(fake[k]) for k in ("STATE_DIRECTORY", "LOGS_DIRECTORY", "RUNTIME_DIRECTORY")
    ]
    kept: list[Path] = []
    for place in sorted({Path(os.path.abspath(p)) for p in places}):
        if any(place == o or o in place.parents for o in systemd_own):
            continue
        if any(k == place or k in place.parents for k in kept):
            continue  # inside one already listed
        kept.append(place)
    return kept


def _private_tmp(plan: Plan) -> list[str]:
    """PrivateTmp=yes, unless the project lives in /tmp (a private /tmp would hide it)."""
    needed = [plan.path.parent, *(s.cwd for s in plan.services.values())]
    if any(t == p or t in p.parents for p in needed for t in TMPS):
        return ["# No PrivateTmp=: the project is under /tmp, which it would hide."]
    return ["PrivateTmp=yes"]


def _protect_home(plan: Plan) -> str:
    needed = [plan.path.parent, Path(sys.executable), *(s.cwd for s in plan.services.values())]
    needed += [Path(os.path.realpath(p)) for p in needed]
    under_home = any(h == p or h in p.parents for p in needed for h in HOMES)
    return "read-only" if under_home else "yes"


def _path(path: Path) -> str:
    return _quote(str(path))


def _quote(arg: str) -> str:
    """One word of a unit file: % doubled (specifiers), quoted when it has spaces or quotes
    (ExecStart's callers double $ too: systemd expands $VAR there)."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in " \t\"'\\;$"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _login() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
