"""sd_notify(3) without libsystemd, and the daemon's side of the conversation with systemd.

`notify` sends one datagram. `Notifier` decides what to send: READY=1 only once the initial
start has converged (every service ready, completed or failed — `systemctl start` returns then,
so units ordered After= this one start against a stack that is really up), a STATUS= line kept
current ("api 3/3 ready, worker 1/1 running"), RELOADING=1 / READY=1 around a reload,
STOPPING=1, and EXTEND_TIMEOUT_USEC until READY=1: the start converges when every service is
ready or has failed by its own bounds (start_timeout, crash_limit, a venv build), which no
fixed TimeoutStartSec= can know; the extensions come from the event loop, so a daemon that
wedges while starting stops sending them and systemd's timeout still ends it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Until READY=1, ask systemd for this much more start-up time, this often.
_EXTEND_BY = 60.0
_EXTEND_EVERY = 20.0
# Before READY, look again this often even without a state change (a phase change that
# wakes nobody, the start timeout to extend).
_STARTING_POLL = 1.0


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1") to $NOTIFY_SOCKET; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (in seconds) if the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


async def watchdog(interval: float) -> None:
    """WATCHDOG=1 every `interval`, from the event loop itself: a wedged loop stops the
    pings and systemd restarts the daemon, which is the point of WatchdogSec."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class Notifier:
    """What systemd is told, and when; one task (`run`) sends it, hooks only flag changes."""

    def __init__(
        self,
        summary: Callable[[], str],
        converged: Callable[[], bool],
        *,
        extend_every: float = _EXTEND_EVERY,
    ) -> None:
        self._summary = summary
        self._converged = converged
        self._extend_every = extend_every
        self._poll = min(_STARTING_POLL, extend_every)
        self.ready = False  # READY=1 was sent for the initial start
        self._changed = asyncio.Event()
        self._sent = ""
        self._prefix = "starting: "
        self._extended = -extend_every

    def changed(self) -> None:
        """Something the summary shows changed (called from the daemon's hooks; cheap)."""
        self._changed.set()

    async def run(self) -> None:
        """Until cancelled: READY=1 once converged, a fresh STATUS= after every change.

        Hooks set an event, so a burst of state changes (100 instances starting) costs one
        summary and at most one datagram per loop turn, not one per change."""
        while True:
            self._changed.clear()
            if not self.ready:
                self._check_ready()
            self._send_status()
            wait = self._poll if not self.ready else None
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _check_ready(self) -> None:
        if self._converged():
            self.ready = True
            self._prefix = ""
            self._sent = self._summary()
            notify("READY=1", f"STATUS={self._sent}")
            log.info("start-up converged: %s", self._sent)
            return
        now = time.monotonic()
        if now - self._extended >= self._extend_every:
            self._extended = now
            notify(f"EXTEND_TIMEOUT_USEC={int(_EXTEND_BY * 1e6)}")

    def _send_status(self) -> None:
        line = self._prefix + self._summary()
        if line != self._sent:
            self._sent = line
            notify(f"STATUS={line}")

    def reloading(self) -> None:
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self) -> None:
        """A reload is over: READY=1 again, unless the initial start is still converging."""
        if self.ready:
            self._sent = self._summary()
            notify("READY=1", f"STATUS={self._sent}")

    def stopping(self) -> None:
        self._prefix = "stopping: "
        self._sent = self._prefix + self._summary()
        notify("STOPPING=1", f"STATUS={self._sent}")
