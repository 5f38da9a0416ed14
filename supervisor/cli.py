"""The `corral` command: a thin client of the daemon, plus `up` / `daemon` that run one."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import config

from .errors import ControlError, SupervisorError
from .launch import cmd_daemon, cmd_up, setup_logging
from .locate import client_for, load_plan
from .logformat import FORMATS
from .output import LogPrinter, print_json, ps_table, scale_lines, status_text

if TYPE_CHECKING:
    from config.model import Plan

Command = Callable[[argparse.Namespace], int]


def _rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> int:
    if args.json:
        print_json(rows)
    else:
        print(ps_table(rows))
    return 0


# --- client commands ---------------------------------------------------------------------------


def cmd_ps(args: argparse.Namespace) -> int:
    client = client_for(args)
    rows = client.call("GET", "/v1/ps")
    if args.json:
        return _rows(args, rows)
    print(ps_table(rows))
    # Desired vs actual, and why, for the autoscaled services (the rows are per instance).
    lines = scale_lines(client.call("GET", "/v1/status"))
    if lines:
        print("\n" + "\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    status = client.call("GET", "/v1/status")
    if args.json:
        print_json(status)
    else:
        print(status_text(status, client.call("GET", "/v1/ps")))
    return 0


def _operation(path: str) -> Command:
    def command(args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"targets": args.targets}
        if getattr(args, "all_at_once", False):
            body["all_at_once"] = True
        return _rows(args, client_for(args).call("POST", path, body))

    return command


def _parse_counts(pairs: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not (value.isascii() and value.isdigit()):
            raise SupervisorError(f"bad scale argument {pair!r}: expected SERVICE=N, e.g. api=5")
        counts[name] = int(value)
    return counts


def cmd_scale(args: argparse.Namespace) -> int:
    body = {"counts": _parse_counts(args.pairs), "save": args.save}
    return _rows(args, client_for(args).call("POST", "/v1/scale", body))


def cmd_logs(args: argparse.Namespace) -> int:
    params: list[tuple[str, str]] = [
        ("n", str(args.lines)),
        ("follow", "1" if args.follow else "0"),
    ]
    params += [("target", t) for t in args.targets]
    printer = LogPrinter()

    for record in client_for(args).stream("/v1/logs", params=params):
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            printer.print(record)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    params = {"follow": "1" if args.follow else "0", "n": str(args.lines)}
    for event in client_for(args).stream("/v1/events", params=params):
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
            what = event["instance"] or event["service"] or "daemon"
            change = f"{event['old']} -> {event['new']}" if event["old"] else event["new"]
            notes = [f"pid {event['pid']}"] if event.get("pid") else []
            notes += [f"port {event['port']}"] if event.get("port") else []
            notes += [event["detail"]] if event["detail"] else []
            detail = f"  ({', '.join(notes)})" if notes else ""
            print(f"{stamp} {event['kind']:<7} {what:<10} {change}{detail}", flush=True)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """A live terminal view of the fleet (Textual, imported only for this command)."""
    try:
        from .top import run
    except ImportError as exc:
        raise SupervisorError(
            f"corral top needs Textual ({exc}); install it with: pip install 'textual>=0.86'"
        ) from None
    return run(client_for(args).socket_path, interval=args.interval)


def cmd_dashboard(args: argparse.Namespace) -> int:
    client = client_for(args)
    path = "/v1/dashboard/token" if args.rotate_token else "/v1/dashboard"
    info = client.call("POST" if args.rotate_token else "GET", path)
    if args.json:
        print_json(info)
        return 0
    if info["url"] is None:
        print(
            "corral: the dashboard is on the control socket only; set [dashboard] listen "
            '(e.g. listen = "127.0.0.1:9100") and restart the daemon, or forward the socket: '
            f"ssh -L 9100:{info['socket']} HOST, then open http://localhost:9100/",
            file=sys.stderr,
        )
        return 1
    print(info["url"])
    if not args.url and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import webbrowser

        webbrowser.open(info["url"])
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    result = client_for(args).call("POST", "/v1/reload")
    if args.json:
        print_json(result)
    else:
        for line in result.get("changes", []) or ["no changes"]:
            print(line)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    reply = client_for(args).call("POST", "/v1/shutdown")
    pid = int(reply["pid"])
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            if args.json:
                print_json({"stopped": True, "pid": pid})
            else:
                print(f"corral: daemon {pid} stopped")
            return 0
        time.sleep(0.05)
    raise SupervisorError(f"daemon {pid} still running after {args.timeout:g}s")


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    from . import unit

    plan = load_plan(args)
    files = unit.units(plan, user=args.user, socket=args.socket_unit)
    if not (args.install or args.output):
        print("\n".join(f.text for f in files), end="")
        return 0
    directory = Path(args.output) if args.output else unit.unit_dir(args.user)
    commands = unit.install(files, directory, args.user, config_path=plan.path, force=args.force)
    for f in files:
        print(f"wrote {directory / f.name}")
    if args.install:
        print("now run:")
        for command in commands:
            print(f"  {command}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    if args.json:
        print_json(config.plan_to_json(plan))
    else:
        print(config.render(plan))
    for warning in _unknown_identities(plan):
        print(f"corral: warning: {warning}", file=sys.stderr)
    return 0


def _unknown_identities(plan: Plan) -> list[str]:
    """`user` / `group` names this host does not know: the config may be meant for another
    host (so not an error), but a daemon here would fail those services."""
    import grp
    import pwd

    found = []
    for service in plan.services.values():
        for key, name, lookup in (
            ("user", service.user, pwd.getpwnam),
            ("group", service.group, grp.getgrnam),
        ):
            if name is None or name.isdigit():
                continue
            try:
                lookup(name)
            except KeyError:
                found.append(
                    f"{plan.path}: services.{service.name}.{key}: no {key} {name!r} on this "
                    "host; a daemon here would fail this service"
                )
    return found


def cmd_proxy(args: argparse.Namespace) -> int:
    from config.model import Balance
    from config.render import format_address

    from .foreground import entry_blocking, proxy_blocking

    setup_logging(args.verbose)
    if args.config:
        if args.listen or args.backend or args.backend_dns:
            raise SupervisorError("--config names listen addresses and backends; drop the flags")
        from config.entry import load_entry

        return entry_blocking(load_entry(Path(args.config)))
    if not args.listen:
        raise SupervisorError("--listen is required (or --config FILE)")
    if not args.backend and not args.backend_dns:
        raise SupervisorError("at least one --backend or --backend-dns is required")
    listen = [_address(a) for a in args.listen]
    backends = [_address(a) for a in args.backend]
    names = [_address(a) for a in args.backend_dns]
    interval = config.parse_duration(args.resolve_interval)
    if interval <= 0:
        raise SupervisorError(f"--resolve-interval must be > 0, got {args.resolve_interval!r}")
    try:
        return proxy_blocking(listen, backends, Balance(args.balance), names, interval)
    except OSError as exc:  # the listen port is taken, or the address is not ours
        where = ", ".join(format_address(a) for a in listen)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SupervisorError(f"cannot listen on {where}: {reason}") from None


def cmd_promote(args: argparse.Namespace) -> int:
    from . import promote

    plan = load_plan(args)
    out = Path(args.output).resolve()
    options = promote.Options(
        base_image=args.base_image, registry=args.registry, publish_mode=args.publish_mode
    )
    result = promote.promote(plan, args.target, out, args.services, options)
    failed = args.strict and result.findings.dropped_any()
    if args.json:
        print_json(
            {
                "target": result.target,
                "output": str(out),
                "written": not failed,
                "files": list(result.files),
                "verdicts": result.findings.to_json(),
            }
        )
    else:
        print(result.findings.report())
    if failed:
        print("corral: --strict: settings would be dropped; nothing written", file=sys.stderr)
        return 1
    promote.write(result, out)
    if not args.json:
        print(f"wrote {len(result.files)} files to {out}")
    if args.build or args.deploy:
        promote.run_tools(result, out, deploy=args.deploy, echo=print)
    return 0


def _address(text: str) -> tuple[str, int]:
    from config.proxy import parse_address  # the same forms `[proxy] listen` accepts

    try:
        return parse_address(text)
    except ValueError:
        raise SupervisorError(f"bad address {text!r}: expected HOST:PORT or [IPv6]:PORT") from None


# --- argument parsing ------------------------------------------------------------------------------


class _Version(argparse.Action):
    """--version, read from the installed package only when asked (it costs an import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print Corral's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from importlib.metadata import version

        print(f"corral {version('corral')}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one JSON object on stderr when --json is on the command line."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            _report_error(f"{self.prog}: {message}", as_json=True)
            self.exit(2)
        super().error(message)


def _options(*, short_file: bool, nested: bool, control_socket: bool = True) -> _Parser:
    """The global options; accepted before the verb and after it (`corral -f x.toml ps`)."""
    common = _Parser(add_help=False)
    # After the verb, an option left out must not reset what was given before it.
    default: Any = argparse.SUPPRESS if nested else None
    flags = ["-f", "--file"] if short_file else ["--file"]
    common.add_argument(
        *flags, default=default, help="config file (default: corral.toml here or above)"
    )
    if control_socket:  # systemd-unit's --socket means a .socket unit
        common.add_argument(
            "--socket", default=default, help="control socket (default: the config's)"
        )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help='machine-readable output; errors as {"error": ...} on stderr',
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="debug logging",
    )
    return common


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="corral",
        description=__doc__,
        parents=[_options(short_file=True, nested=False)],
    )
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        # `logs -f` / `events -f` mean follow (as in tail/docker); there the file is --file.
        parent = _options(
            short_file=name not in ("logs", "events"),
            nested=True,
            control_socket=name != "systemd-unit",
        )
        sp = sub.add_parser(name, parents=[parent], help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    up = add("up", cmd_up, "run the stack (foreground, with logs; -d to detach)")
    up.add_argument("-d", "--detach", action="store_true", help="run in the background")
    up.add_argument("--watch", action="store_true", help="restart services when files change")
    up.add_argument("--timeout", type=_seconds, default=120.0, help="-d: wait this long for ready")
    daemon = add("daemon", cmd_daemon, "run the daemon in the foreground (for systemd)")
    daemon.add_argument("--watch", action="store_true", help="restart services when files change")
    for sp in (up, daemon):
        sp.add_argument(
            "--log-format",
            choices=FORMATS,
            default="text",
            help="the daemon's own log lines: text (timestamped; <N> priorities for the "
            "journal) or one JSON object per line",
        )
    add("status", cmd_status, "the daemon: pid, config, uptime, proxy, services")
    add("ps", cmd_ps, "list instances")
    for name, helptext in (
        ("start", "start stopped or failed instances"),
        ("stop", "stop instances (they stay stopped)"),
        ("restart", "restart instances (rolling by default)"),
    ):
        sp = add(name, _operation(f"/v1/{name}"), helptext)
        sp.add_argument("targets", nargs="*", metavar="TARGET", help="service or service.N")
        if name == "restart":
            sp.add_argument("--all-at-once", action="store_true", help="not rolling")
    scale = add("scale", cmd_scale, "change instance counts: corral scale api=5")
    scale.add_argument("pairs", nargs="+", metavar="SERVICE=N")
    scale.add_argument("--save", action="store_true", help="write the counts into corral.toml")
    logs = add("logs", cmd_logs, "show logs")
    logs.add_argument("targets", nargs="*", metavar="TARGET")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    logs.add_argument("-n", "--lines", type=_count, default=100, help="lines of history")
    events = add("events", cmd_events, "show state changes")
    events.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    events.add_argument("-n", "--lines", type=_count, default=50, help="events of history")
    top = add("top", cmd_top, "live view of instances, traffic and logs (q quits)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    dash = add("dashboard", cmd_dashboard, "print the web dashboard's URL (with its token)")
    dash.add_argument("--url", action="store_true", help="print the URL, do not open a browser")
    dash.add_argument("--rotate-token", action="store_true", help="replace the token first")
    add("reload", cmd_reload, "re-read the config and apply the difference")
    down = add("down", cmd_down, "stop everything and the daemon")
    down.add_argument("--timeout", type=_seconds, default=120.0)
    add("check", cmd_check, "validate the config and print the resolved plan")
    unit = add(
        "systemd-unit", cmd_systemd_unit, "print (or --install) a systemd unit for the stack"
    )
    unit.add_argument("--user", action="store_true", help="a user unit (systemctl --user)")
    unit.add_argument(
        "--socket",
        dest="socket_unit",
        action="store_true",
        help="and a .socket unit: systemd listens on [proxy] listen and hands over the sockets",
    )
    where = unit.add_mutually_exclusive_group()
    where.add_argument(
        "--install", action="store_true", help="write it where systemd looks; print what to run"
    )
    where.add_argument("-o", "--output", metavar="DIR", help="write the unit files into DIR")
    unit.add_argument(
        "--force", action="store_true", help="replace a unit file written for another config"
    )
    proxy = add("proxy", cmd_proxy, "run only the load balancer (fixed or DNS-found backends)")
    proxy.add_argument("--listen", action="append", default=[], metavar="HOST:PORT")
    proxy.add_argument("--backend", action="append", default=[], metavar="HOST:PORT")
    proxy.add_argument(
        "--backend-dns",
        action="append",
        default=[],
        metavar="NAME:PORT",
        help="every address NAME resolves to is a backend (re-resolved on an interval)",
    )
    proxy.add_argument("--resolve-interval", default="2s", help="DNS re-resolve interval")
    proxy.add_argument("--balance", default="round_robin", choices=_balances())
    proxy.add_argument(
        "--config", metavar="FILE", help="routes and backends from an entry file (docs/promote.md)"
    )
    promote = add("promote", cmd_promote, "write artifacts for docker, compose, swarm, k8s, ...")
    promote.add_argument("target", choices=_targets(), metavar="TARGET", help=", ".join(_targets()))
    promote.add_argument("services", nargs="*", metavar="SERVICE", help="default: every service")
    promote.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    promote.add_argument("--build", action="store_true", help="build the images (or sam build)")
    promote.add_argument("--deploy", action="store_true", help="build, then deploy with the tool")
    promote.add_argument("--strict", action="store_true", help="fail if any setting is dropped")
    promote.add_argument("--base-image", default="python:3.11-slim", help="FROM of every image")
    promote.add_argument("--registry", default="", help="image name prefix, e.g. ghcr.io/acme")
    promote.add_argument(
        "--publish-mode",
        choices=("ingress", "host"),
        default="ingress",
        help="swarm: how the entry proxy's port is published (host: no routing mesh)",
    )
    return p


def _targets() -> tuple[str, ...]:
    # promote.TARGETS, spelled out: every command builds this parser, and importing the
    # promote package for it would slow `corral ps` (a test keeps the two equal).
    return ("docker", "compose", "swarm", "k8s", "lambda", "knative")


def _balances() -> list[str]:
    from config.model import Balance

    return [b.value for b in Balance]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 86400, got {text!r}")
    return value


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _report_error(message: str, *, as_json: bool, **fields: object) -> None:
    if as_json:
        print(json.dumps({"error": message, **fields}), file=sys.stderr)
    else:
        print(f"corral: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _Parser.json_errors = "--json" in argv
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        file = str(exc.file) if exc.file is not None else None
        _report_error(str(exc), as_json=args.json, file=file, key=exc.key)
        return 2
    except (SupervisorError, ControlError) as exc:
        _report_error(str(exc), as_json=args.json)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `corral logs | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
