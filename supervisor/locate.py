"""Which config a CLI command means, and which daemon serves it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import config
from config.model import Plan

from .client import Client


def config_path(args: argparse.Namespace) -> Path:
    """`-f FILE`, else the corral.toml here or in the nearest parent; absolute, resolved."""
    if args.file:
        return Path(args.file).absolute().resolve()
    return config.find_config(Path.cwd()).resolve()


def load_plan(args: argparse.Namespace) -> Plan:
    return config.load(config_path(args))


def client_for(args: argparse.Namespace) -> Client:
    """The daemon to talk to: --socket, then $CORRAL_SOCKET, then the config's own daemon.

    With a config (found here, or -f), the daemon must serve that very file: two configs never
    reach each other's daemon, even when they share a socket path.
    """
    explicit = args.socket or os.environ.get("CORRAL_SOCKET")
    if explicit:
        serving = config_path(args) if args.file else None
        return _checked(Client(Path(explicit), config=serving))
    path = config_path(args)
    try:
        socket = config.load(path).daemon.socket
    except config.ConfigError:
        # A broken config must not lock the user out of the daemon that is running the last
        # good one: ps, logs, down and reload (which reports the error) still work. A missing
        # or unreadable file is still an error (socket_of raises).
        socket = config.socket_of(path)
    return _checked(Client(socket, config=path))


def plan_client(plan: Plan) -> Client:
    """The client for the daemon that serves `plan`."""
    return _checked(Client(plan.daemon.socket, config=plan.path))


def _checked(client: Client) -> Client:
    from config.daemon import tmp_socket_dir

    from .privatedir import check_shared_tmp_dir

    if client.socket_path.parent == tmp_socket_dir():
        # Another user may have planted /tmp/corral-<uid>; don't talk to whatever is in it.
        check_shared_tmp_dir(client.socket_path.parent)
    return client
