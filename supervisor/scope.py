"""Every process an instance started, found and stopped with it, even those that escaped.

A program that double-forks and calls setsid leaves its instance's process group and its
process tree; killing the group and the tree (process.stop_tree) misses it. Two ways find it:

- a cgroup v2 per instance (cgroup.py), when the daemon has a delegated cgroup (systemd's
  Delegate=yes, a container's own cgroup namespace, or root outside systemd): complete, since
  no process leaves its cgroup by itself, and cheap (one write to `cgroup.kill`);
- otherwise the instance's token: every process it starts carries
  `CORRAL_INSTANCE_TOKEN=<daemon token>:<instance>` in its environment (inherited by
  grandchildren unless they clear their environment), and a scan of /proc finds them. Scans
  requested at the same moment (a roll, a scale-down) share one pass over /proc.

Either way the sweep happens when that instance's process ends (stop, restart, crash), not
only at `corral down`; the daemon-wide token sweep at shutdown stays as the last net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from config.model import CgroupLimits

from .cgroup import CONTROLLERS, CgroupTree, InstanceCgroup, cap_files, detect
from .clock import SYSTEM_CLOCK, Clock
from .process import wait_gone

log = logging.getLogger(__name__)

TOKEN_ENV = "CORRAL_INSTANCE_TOKEN"

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class Scopes:
    """The daemon's choice of mechanism, and the scope of each instance."""

    def __init__(self, token: str, spawn: Spawn, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._token = token
        self._tree: CgroupTree | None = None
        self._clock = clock
        self._sweeper = _TokenSweeper(spawn)
        self.closing = False  # at shutdown the daemon-wide sweep replaces per-instance scans
        self._why_not = "not opened yet"  # why there are no per-instance cgroups
        self._enabled: set[str] = set()  # controllers the instance cgroups have
        self._refused: dict[str, str] = {}  # controller → why it could not be enabled
        self._warned: set[str] = set()  # services told that their caps are not applied

    def open(self, environ: Mapping[str, str] = os.environ) -> None:
        """Per-instance cgroups if this daemon may have them, tokens otherwise (once the
        daemon holds its project's lock: the cgroup subtree is created here)."""
        verdict = detect(environ)
        if verdict.directory is None:
            log.info("no per-instance cgroups (%s); using instance tokens", verdict.reason)
            self._why_not = f"no per-instance cgroups: {verdict.reason}"
            return
        try:
            self._tree = CgroupTree.create(verdict.directory, self._token)
        except OSError as exc:
            log.info("no per-instance cgroups (%s: %s); using instance tokens", verdict.reason, exc)
            self._why_not = (
                f"no per-instance cgroups: cannot create one in {verdict.directory}: {exc}"
            )
            return
        log.info("instances get cgroups under %s", self._tree.root)
        if swept := CgroupTree.sweep_abandoned(verdict.directory):
            log.info("removed %d empty cgroup subtree(s) of daemons that are gone", swept)

    @property
    def mechanism(self) -> str:
        """ "cgroup <path>" or "token" (for `GET /v1/status` and the docs)."""
        return f"cgroup {self._tree.root}" if self._tree is not None else "token"

    @property
    def tree(self) -> CgroupTree | None:
        return self._tree

    def for_instance(
        self, owner: str, service: str = "", caps: CgroupLimits | None = None
    ) -> Scope:
        """The scope of one instance life (`owner` like "api.1#3"), its cgroup capped."""
        cgroup = None
        why_not = self._why_not
        if self._tree is not None:
            try:
                cgroup = self._tree.instance(owner)
            except OSError as exc:
                log.warning("%s: no cgroup (%s); using its token", owner, exc)
                why_not = f"no cgroup for {owner}: {exc}"
        scope = Scope(self, f"{self._token}:{owner}", cgroup)
        files = cap_files(caps) if caps is not None else {}
        if files:
            scope.caps = self._cap(cgroup, files, why_not)
            if scope.caps.missing and service not in self._warned:
                self._warned.add(service)
                log.warning(
                    "%s: cgroup caps not applied (%s): %s",
                    service,
                    ", ".join(f"{f}={v}" for f, v in scope.caps.missing.items()),
                    scope.caps.why,
                )
        return scope

    def _cap(self, cgroup: InstanceCgroup | None, files: dict[str, str], why_not: str) -> Caps:
        """Write what can be written of `files` into `cgroup`; say why the rest was not."""
        if cgroup is None:
            return Caps({}, files, why_not)
        assert self._tree is not None
        wanted = {CONTROLLERS[name] for name in files} - self._enabled - set(self._refused)
        if wanted:
            enabled = self._tree.enable(wanted)
            self._enabled |= enabled.controllers
            for controller in wanted - enabled.controllers:
                self._refused[controller] = enabled.reason
        applied: dict[str, str] = {}
        missing: dict[str, str] = {}
        reasons: list[str] = []
        for name, value in files.items():
            controller = CONTROLLERS[name]
            if controller not in self._enabled:
                missing[name] = value
                reasons.append(self._refused[controller])
                continue
            try:
                cgroup.limit(name, value)
            except OSError as exc:
                missing[name] = value
                reasons.append(f"cannot write {cgroup.path / name}: {exc.strerror or exc}")
            else:
                applied[name] = value
        return Caps(applied, missing, "; ".join(dict.fromkeys(reasons)))

    def remove_stale(self, previous_token: str | None) -> None:
        """A previous daemon's cgroup subtree (it died without removing it)."""
        if self._tree is not None and previous_token and previous_token != self._token:
            CgroupTree.remove_stale(self._tree.own, previous_token)

    def close(self) -> None:
        """Remove the daemon's cgroup subtree (blocking: call it in a thread)."""
        if self._tree is not None:
            self._tree.remove()


@dataclass(frozen=True, slots=True)
class Caps:
    """An instance's cgroup caps: those written, those not, and why not."""

    applied: Mapping[str, str] = field(default_factory=dict)
    missing: Mapping[str, str] = field(default_factory=dict)
    why: str = ""

    def note(self) -> str:
        """For `ps` and `status`: "" without caps, else what is in force or why not."""
        parts = [f"{name}={value}" for name, value in self.applied.items()]
        if self.missing:
            names = ", ".join(self.missing)
            parts.append(f"{names} not applied: {self.why}")
        return "; ".join(parts)


class Scope:
    """What one instance's processes are: a cgroup, or a token in their environment."""

    def __init__(self, scopes: Scopes, token: str, cgroup: InstanceCgroup | None) -> None:
        self._scopes = scopes
        self.token = token
        self.cgroup = cgroup
        self.caps = Caps()

    def environ(self) -> dict[str, str]:
        return {TOKEN_ENV: self.token}

    @property
    def procs_file(self) -> bytes | None:
        """The cgroup.procs a new child writes itself into before exec."""
        return self.cgroup.procs_file if self.cgroup is not None else None

    def adopt(self, pid: int) -> None:
        if self.cgroup is not None:
            self.cgroup.adopt(pid)

    def signal(self, sig: int) -> None:
        """The stop signal, to every process of the instance we can find without a scan."""
        if self.cgroup is not None:
            self.cgroup.signal(sig)

    def kill_now(self) -> None:
        """SIGKILL everything at once (synchronous; a second Ctrl-C, an aborting daemon)."""
        if self.cgroup is not None:
            self.cgroup.kill()

    async def sweep(self, grace: float) -> int:
        """The instance's process is gone: stop what it left (after `grace` to exit on its
        own, for those already sent the stop signal). Returns how many were left."""
        if self.cgroup is not None:
            return await self._sweep_cgroup(self.cgroup, grace)
        if self._scopes.closing:
            return 0  # the daemon-wide sweep at shutdown finds them
        return await self._scopes._sweeper.sweep(self.token, grace)

    async def _sweep_cgroup(self, cgroup: InstanceCgroup, grace: float) -> int:
        left = len(cgroup.pids())
        if not left:
            return 0
        clock = self._scopes._clock
        deadline = clock.now() + grace
        while cgroup.populated() and clock.now() < deadline:
            await clock.sleep(0.02)
        if cgroup.populated():
            cgroup.kill()
            deadline = clock.now() + 2.0
            while cgroup.populated() and clock.now() < deadline:
                await clock.sleep(0.01)
        log.info("stopped %d process(es) left in %s", left, cgroup.path)
        return left

    def close(self) -> None:
        """The instance life ended: remove its cgroup (kept if something still lives there)."""
        if self.cgroup is not None and not self.cgroup.remove():
            self.cgroup.kill()


class _TokenSweeper:
    """One scan of /proc serves every sweep asked for at the same moment."""

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn  # the daemon's nursery owns the scanning task
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._grace = 0.0
        self._running: asyncio.Task[None] | None = None

    async def sweep(self, token: str, grace: float) -> int:
        future = self._pending.get(token)
        if future is None:
            future = self._pending[token] = asyncio.get_running_loop().create_future()
        self._grace = max(self._grace, grace)
        if self._running is None or self._running.done():
            self._running = self._spawn(self._drain(), "token sweep")
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the rest of a burst (a roll's batch, a scale-down) join
        while self._pending:
            batch, self._pending = self._pending, {}
            grace, self._grace = self._grace, 0.0
            try:
                found = await asyncio.to_thread(kill_tokens, set(batch), grace)
            except Exception as exc:  # never leave a waiter hanging
                log.warning("instance token sweep failed: %s", exc)
                found = {}
            for token, future in batch.items():
                if not future.done():
                    future.set_result(found.get(token, 0))
        self._running = None


def kill_tokens(tokens: Collection[str], grace: float) -> dict[str, int]:
    """Stop every process whose environment carries one of `tokens` (blocking)."""
    victims: dict[str, list[psutil.Process]] = {}
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            token = proc.environ().get(TOKEN_ENV)
            if token is not None and token in tokens:
                victims.setdefault(token, []).append(proc)
    procs = [p for found in victims.values() for p in found]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = wait_gone(procs, grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_gone(alive, 2.0)
    for token, found in victims.items():
        log.info("stopped %d process(es) left by instance %s", len(found), token.partition(":")[2])
    return {token: len(found) for token, found in victims.items()}
