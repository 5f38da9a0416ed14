"""`corral up` and `corral daemon`: the commands that run a daemon (here, or detached)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from config.model import Plan

from .client import Client
from .errors import SupervisorError
from .locate import load_plan, plan_client
from .output import LogPrinter, print_json, ps_table


def setup_logging(verbose: bool, *, foreground: bool = False, log_format: str = "text") -> bool:
    """The daemon's log on stderr (docs/systemd.md#logs); True if stderr is the journal."""
    from .logformat import configure

    level = logging.DEBUG if verbose else logging.INFO
    # `up` interleaves these lines with instance output, which has no timestamps either.
    journal = configure(level, log_format, timestamps=not foreground)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if foreground and not verbose:
        # `up` prints instance output and Corral's own notes through the LogPrinter already;
        # the daemon log would say everything twice. Warnings and errors still show.
        logging.getLogger("supervisor").setLevel(logging.WARNING)
        logging.getLogger("supervisor.child").setLevel(logging.WARNING)
    return journal


def cmd_daemon(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground, for systemd (logs go to stderr → the journal)."""
    if not setup_logging(args.verbose, log_format=args.log_format):
        # Instance output already has its own rotating files; only the journal should get a
        # second copy (it is where `journalctl -u` users look). `up -d` writes daemon.log.
        logging.getLogger("supervisor.child").setLevel(logging.WARNING)
    from .foreground import serve_blocking

    return serve_blocking(load_plan(args), None, args.watch)


def cmd_up(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    client = plan_client(plan)
    running = client.alive()  # WrongDaemon if another config's daemon has this socket
    if args.detach:
        if not running:
            _spawn_daemon(plan, args)
        return _report_when_settled(client, args.timeout, as_json=args.json)
    if running:
        raise SupervisorError(
            f"a daemon is already running for {plan.path}; "
            "see `corral ps`, `corral logs -f`, or stop it with `corral down`"
        )
    from .foreground import serve_blocking

    setup_logging(args.verbose, foreground=True, log_format=args.log_format)
    return serve_blocking(plan, LogPrinter(), args.watch)


def _spawn_daemon(plan: Plan, args: argparse.Namespace) -> None:
    """Start `corral daemon` detached; return once its socket answers."""
    from .privatedir import make_private_dir, private_file

    make_private_dir(plan.daemon.state_dir)
    log_path = plan.daemon.state_dir / "daemon.log"
    argv = [sys.executable, "-m", "supervisor", "daemon", "-f", str(plan.path)]
    if args.watch:
        argv.append("--watch")
    if args.log_format != "text":
        argv += ["--log-format", args.log_format]
    with open(private_file(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as out:
        offset = out.tell()  # show only this start's output if it fails
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=plan.path.parent,
        )
    client = plan_client(plan)
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


def _report_when_settled(client: Client, timeout: float, *, as_json: bool) -> int:
    # The socket timeout must outlast the wait, or a long --timeout ends in "timed out".
    rows = client.call("GET", "/v1/wait", params={"timeout": str(timeout)}, timeout=timeout + 30)
    if as_json:
        print_json(rows)
    else:
        print(ps_table(rows))
    bad = [r for r in rows if r["state"] == "failed"]
    pending = [
        r for r in rows if not r["ready"] and r["state"] not in ("completed", "failed", "idle")
    ]
    if bad:
        names = ", ".join(str(r["name"]) for r in bad)
        # `logs SERVICE`, not `logs SERVICE.N`: a venv build failure is logged for the service
        # (index 0), which only the service-wide view includes.
        raise SupervisorError(f"failed: {names} (see `corral logs {bad[0]['service']}`)")
    if pending:
        names = ", ".join(str(r["name"]) for r in pending)
        raise SupervisorError(f"not ready after {timeout:g}s: {names}")
    return 0
