"""The `corral` command: a thin client of the daemon, plus `up` / `daemon` that run one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import config
from config.model import Plan

from .client import Client
from .errors import ControlError, SupervisorError
from .output import LogPrinter, ps_table

log = logging.getLogger("corral")

Command = Callable[[argparse.Namespace], int]


# --- finding the config and the daemon ------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file).resolve()
    return config.find_config(Path.cwd())


def _plan(args: argparse.Namespace) -> Plan:
    return config.load(_config_path(args))


def _socket(args: argparse.Namespace) -> Path:
    """--socket, then $CORRAL_SOCKET, then the socket of the corral.toml found from here."""
    if args.socket:
        return Path(args.socket)
    if os.environ.get("CORRAL_SOCKET"):
        return Path(os.environ["CORRAL_SOCKET"])
    path = _config_path(args)
    try:
        return config.load(path).daemon.socket
    except config.ConfigError:
        # A broken config must not lock the user out of the daemon that is running the last
        # good one: ps, logs, down and reload (which reports the error) still work.
        return config.socket_of(path)


def _client(args: argparse.Namespace) -> Client:
    return Client(_socket(args))


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


# --- commands that run a daemon -------------------------------------------------------------------


def _setup_logging(verbose: bool, *, foreground: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="corral: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if foreground and not verbose:
        # `up` prints instance output and Corral's own notes through the LogPrinter already;
        # the daemon log would say everything twice. Warnings and errors still show.
        logging.getLogger("supervisor").setLevel(logging.WARNING)
        logging.getLogger("supervisor.child").setLevel(logging.WARNING)


def cmd_daemon(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground, for systemd (logs go to stderr → the journal)."""
    _setup_logging(args.verbose)
    if not os.environ.get("JOURNAL_STREAM"):
        # Instance output already has its own rotating files; only the journal should get a
        # second copy (it is where `journalctl -u` users look). `up -d` writes daemon.log.
        logging.getLogger("supervisor.child").setLevel(logging.WARNING)
    from .foreground import serve_blocking

    return serve_blocking(_plan(args), None, args.watch)


def cmd_up(args: argparse.Namespace) -> int:
    plan = _plan(args)
    client = Client(plan.daemon.socket)
    running = client.alive()
    if args.detach:
        if not running:
            _spawn_daemon(plan, args)
        return _report_when_settled(client, args.timeout)
    if running:
        print(
            f"corral: a daemon is already running for {plan.path}; "
            "see `corral ps`, `corral logs -f`, or stop it with `corral down`",
            file=sys.stderr,
        )
        return 1
    from .foreground import serve_blocking

    _setup_logging(args.verbose, foreground=True)
    return serve_blocking(plan, LogPrinter(), args.watch)


def _spawn_daemon(plan: Plan, args: argparse.Namespace) -> None:
    """Start `corral daemon` detached; return once its socket answers."""
    plan.daemon.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = plan.daemon.state_dir / "daemon.log"
    argv = [sys.executable, "-m", "supervisor", "daemon", "-f", str(plan.path)]
    if args.watch:
        argv.append("--watch")
    with open(log_path, "ab") as out:
        offset = out.tell()  # show only this start's output if it fails
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=plan.path.parent,
        )
    client = Client(plan.daemon.socket)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                f.seek(offset)
                tail = f.read().decode(errors="replace").strip().splitlines()[-15:]
            raise SupervisorError(
                f"the daemon exited at start-up ({log_path}):\n" + "\n".join(tail)
            )
        if client.alive():
            return
        time.sleep(0.05)
    raise SupervisorError(f"the daemon did not open {plan.daemon.socket} within 30s")


def _report_when_settled(client: Client, timeout: float) -> int:
    rows = client.call("GET", "/v1/wait", params={"timeout": str(timeout)})
    print(ps_table(rows))
    bad = [r for r in rows if r["state"] == "failed"]
    pending = [r for r in rows if not r["ready"] and r["state"] not in ("completed", "failed")]
    if bad:
        names = ", ".join(str(r["name"]) for r in bad)
        print(f"corral: failed: {names} (see `corral logs {bad[0]['name']}`)", file=sys.stderr)
        return 1
    if pending:
        names = ", ".join(str(r["name"]) for r in pending)
        print(f"corral: not ready after {timeout:g}s: {names}", file=sys.stderr)
        return 1
    return 0


# --- client commands ---------------------------------------------------------------------------


def cmd_ps(args: argparse.Namespace) -> int:
    rows = _client(args).call("GET", "/v1/ps")
    if args.json:
        _print_json(rows)
    else:
        print(ps_table(rows))
    return 0


def _operation(path: str) -> Command:
    def command(args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"targets": args.targets}
        if getattr(args, "all_at_once", False):
            body["all_at_once"] = True
        rows = _client(args).call("POST", path, body)
        if args.json:
            _print_json(rows)
        else:
            print(ps_table(rows))
        return 0

    return command


def _parse_counts(pairs: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value.isdigit():
            raise SupervisorError(f"bad scale argument {pair!r}: expected SERVICE=N, e.g. api=5")
        counts[name] = int(value)
    return counts


def cmd_scale(args: argparse.Namespace) -> int:
    counts = _parse_counts(args.pairs)
    rows = _client(args).call("POST", "/v1/scale", {"counts": counts, "save": args.save})
    if args.json:
        _print_json(rows)
    else:
        print(ps_table(rows))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    params: list[tuple[str, str]] = [
        ("n", str(args.lines)),
        ("follow", "1" if args.follow else "0"),
    ]
    params += [("target", t) for t in args.targets]
    printer = LogPrinter()

    for record in _client(args).stream("/v1/logs", params=params):
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            printer.print(record)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    params = {"follow": "1" if args.follow else "0", "n": str(args.lines)}
    for event in _client(args).stream("/v1/events", params=params):
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
    return run(_socket(args), interval=args.interval)


def cmd_dashboard(args: argparse.Namespace) -> int:
    client = _client(args)
    path = "/v1/dashboard/token" if args.rotate_token else "/v1/dashboard"
    info = client.call("POST" if args.rotate_token else "GET", path)
    if args.json:
        _print_json(info)
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
    result = _client(args).call("POST", "/v1/reload")
    if args.json:
        _print_json(result)
    else:
        for line in result.get("changes", []) or ["no changes"]:
            print(line)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    client = _client(args)
    reply = client.call("POST", "/v1/shutdown")
    pid = int(reply["pid"])
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            print(f"corral: daemon {pid} stopped")
            return 0
        time.sleep(0.05)
    print(f"corral: daemon {pid} still running after {args.timeout:g}s", file=sys.stderr)
    return 1


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmd_check(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.json:
        _print_json(config.plan_to_json(plan))
    else:
        print(config.render(plan))
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from config.model import Balance

    from .foreground import entry_blocking, proxy_blocking

    _setup_logging(args.verbose)
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
    return proxy_blocking(listen, backends, Balance(args.balance), names, interval)


def cmd_promote(args: argparse.Namespace) -> int:
    from . import promote

    plan = _plan(args)
    out = Path(args.output).resolve()
    options = promote.Options(
        base_image=args.base_image, registry=args.registry, publish_mode=args.publish_mode
    )
    result = promote.promote(plan, args.target, out, args.services, options)
    failed = args.strict and result.findings.dropped_any()
    if args.json:
        _print_json(
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


def _balances() -> list[Any]:
    from config.model import Balance

    return list(Balance)


# --- argument parsing ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    def options(short_file: bool) -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False)
        flags = ["-f", "--file"] if short_file else ["--file"]
        common.add_argument(*flags, help="config file (default: corral.toml here or above)")
        common.add_argument("--socket", help="control socket (default: from the config)")
        common.add_argument("--json", action="store_true", help="machine-readable output")
        common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        return common

    p = argparse.ArgumentParser(prog="corral", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        # `logs -f` / `events -f` mean follow (as in tail/docker); there the file is --file.
        parent = options(short_file=name not in ("logs", "events"))
        sp = sub.add_parser(name, parents=[parent], help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    up = add("up", cmd_up, "run the stack (foreground, with logs; -d to detach)")
    up.add_argument("-d", "--detach", action="store_true", help="run in the background")
    up.add_argument("--watch", action="store_true", help="restart services when files change")
    up.add_argument("--timeout", type=float, default=120.0, help="-d: wait this long for ready")
    daemon = add("daemon", cmd_daemon, "run the daemon in the foreground (for systemd)")
    daemon.add_argument("--watch", action="store_true", help="restart services when files change")
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
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines of history")
    events = add("events", cmd_events, "show state changes")
    events.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    events.add_argument("-n", "--lines", type=int, default=50, help="events of history")
    top = add("top", cmd_top, "live view of instances, traffic and logs (q quits)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    dash = add("dashboard", cmd_dashboard, "print the web dashboard's URL (with its token)")
    dash.add_argument("--url", action="store_true", help="print the URL, do not open a browser")
    dash.add_argument("--rotate-token", action="store_true", help="replace the token first")
    add("reload", cmd_reload, "re-read the config and apply the difference")
    down = add("down", cmd_down, "stop everything and the daemon")
    down.add_argument("--timeout", type=float, default=120.0)
    add("check", cmd_check, "validate the config and print the resolved plan")
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
    proxy.add_argument("--balance", default="round_robin", choices=[b.value for b in _balances()])
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    except (SupervisorError, ControlError) as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `corral logs | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
