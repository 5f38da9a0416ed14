"""`corral top`: a live terminal view of the fleet (Textual), a client of the control API."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..client import Client
from ..errors import SupervisorError

MIN_INTERVAL, MAX_INTERVAL = 0.25, 60.0


def run(socket: Path, *, interval: float = 1.0) -> int:
    """Show the fleet until q or Ctrl+C; the terminal is restored on every way out."""
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise SupervisorError(
            f"--interval must be from {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, got {interval:g}"
        )
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SupervisorError(
            "corral top needs a terminal; scripts can read `corral ps --json` or GET /v1/stats"
        )
    # Fail with the CLI's one-line error before the screen is taken over.
    Client(socket, timeout=5.0).call("GET", "/v1/status")
    from .app import TopApp  # Textual loads here, and only here

    # Rich takes COLUMNS / LINES over the terminal's real size; exported by a parent process
    # (a test runner, some shells) they pin the layout and break resizing.
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)

    TopApp(socket, interval=interval).run()
    return 0
