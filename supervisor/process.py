"""Start a child in its own session and stop its whole process tree."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from .errors import SpawnError

if TYPE_CHECKING:
    from .rlimits import Limit
    from .runas import RunAs

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded in the parent: the child runs between fork and exec, where loading a library could deadlock.
_libc = ctypes.CDLL(None, use_errno=True)
_CLOSE_RANGE_CLOEXEC = 4  # linux/close_range.h
_close_range = getattr(_libc, "close_range", None)  # glibc 2.34+
if _close_range is not None:
    _close_range.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_int)


def _inherit_only_stdio() -> None:
    """In the child before exec: every descriptor above stderr closes at exec.

    uvloop (libuv) does not close the parent's inheritable descriptors as the stdlib's
    close_fds does, so an instance got whatever the daemon had inherited (say, a pipe of the
    shell that started `corral daemon`, held open as long as the instance lives) and libuv's
    spare copies of its own stdout and stderr. Marking them close-on-exec, not closing them, keeps libuv's
    exec-error pipe working.
    """
    if _close_range is not None and _close_range(3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) == 0:
        return
    for name in os.listdir("/proc/self/fd"):  # kernels before 5.11
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


# What a child may inherit from the daemon's environment; everything else comes from the config.
ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


def base_environ(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of the daemon's environment (plus every LC_* locale variable)."""
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if k in ENV_ALLOW or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


def _make_preexec(
    parent: int,
    cgroup_procs: bytes | None,
    rlimits: Sequence[Limit] = (),
    run_as: RunAs | None = None,
) -> object:
    # Everything is computed before fork; the child only makes system calls with it. The
    # order matters: the cgroup and raised limits need root, so they come before setuid;
    # PDEATHSIG comes after it, because the kernel clears it when the credentials change.
    groups = list(run_as.groups) if run_as is not None else []
    uid, gid = (run_as.uid, run_as.gid) if run_as is not None else (-1, -1)

    def preexec() -> None:
        _inherit_only_stdio()
        # Into the instance's cgroup before exec, so that nothing it starts can be outside it.
        # If that fails the parent adopts it right after (Scope.adopt): a narrower race.
        if cgroup_procs is not None:
            try:
                fd = os.open(cgroup_procs, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            except OSError:
                pass
        for res, soft, hard in rlimits:
            resource.setrlimit(res, (soft, hard))
        if uid >= 0:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        # If the daemon dies (even SIGKILL/OOM) the kernel sends SIGTERM to the instance, so it
        # never runs on unsupervised; its own children are cleaned by the next daemon (token scan).
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the daemon died between fork and prctl
            os._exit(1)

    return preexec


async def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    cgroup_procs: bytes | None = None,
    rlimits: Sequence[Limit] = (),
    run_as: RunAs | None = None,
) -> asyncio.subprocess.Process:
    """Start argv in a new session (its own process group), stdout/stderr piped to us;
    in the cgroup whose `cgroup.procs` is given, if any; with `rlimits` set, and as
    `run_as` (setgroups, setgid, setuid) if given."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitProtocol(loop),
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_make_preexec(os.getpid(), cgroup_procs, rlimits, run_as),
        )
        return Child(transport, protocol, loop)
    except OSError as exc:
        # Out of fds, memory or pids in the daemon is the daemon's trouble, not the program's.
        transient = exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN)
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}", transient=transient) from exc
    except subprocess.SubprocessError as exc:
        # Raised for an exception between fork and exec (setrlimit, setuid): checked when
        # the service was brought up, so this is rare: say what was being done.
        what = f" as {run_as.describe()}" if run_as is not None else ""
        what += " with its rlimits" if rlimits else ""
        raise SpawnError(f"cannot start {argv[0]!r}{what}: {exc}") from exc
    except ValueError as exc:
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from exc
    except RuntimeError as exc:  # "can't start new thread" (the child watcher): no threads left
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}", transient=True) from exc


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class Child(asyncio.subprocess.Process):
    """asyncio's Process, whose wait() returns when the process has exited.

    The stdlib loop's wait() also waits until every copy of the child's stdout/stderr pipes
    is closed (uvloop's does not): a grandchild that escaped the group and holds them would
    keep a stopped instance "stopping" for as long as it lives.
    """

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _ExitProtocol,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, loop)
        self._exited = protocol.exited

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        code = self.returncode
        assert code is not None
        return code


# psutil's children(recursive=True) reads every /proc entry on each call; stopping 100
# instances at once would scan /proc 100 times. One parent→children map serves a whole burst.
_TREE_TTL = 0.1
# SIGKILL cannot be ignored, but a process in uninterruptible sleep (a hung NFS read) dies
# only when it leaves it: keep killing (and waiting) until it is reaped.
_KILL_RETRY = 1.0
_KILL_RETRY_MAX = 10.0
_tree: tuple[float, dict[int, list[int]]] = (-1.0, {})


def _children_map() -> dict[int, list[int]]:
    global _tree
    taken, tree = _tree
    now = time.monotonic()
    if now - taken > _TREE_TTL:
        tree = {}
        for pid, ppid in _ppid_map().items():
            tree.setdefault(ppid, []).append(pid)
        _tree = (now, tree)
    return tree


def _ppid_map() -> dict[int, int]:
    # psutil's own pid→ppid reader (what children() uses) reads only /proc/*/stat and is ~3x
    # cheaper than process_iter, which builds a Process object per pid; it is private, so fall
    # back to the public API if a psutil release drops it.
    reader = getattr(psutil, "_ppid_map", None)
    if reader is not None:
        return dict(reader())
    return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"]) if p.info["ppid"]}


def tree_pids(pid: int) -> list[int]:
    """`pid` and every live descendant's pid (`pid` first), from one shared /proc scan."""
    try:
        tree = _children_map()
    except (OSError, psutil.Error):
        return [pid]  # no fd to read /proc with: the process alone, this time
    found = [pid]
    todo = list(tree.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, ()))
    return found


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of pid (snapshot), for killing grandchildren that left the group.

    Never raises: when /proc cannot be read (the daemon is out of fds) it returns what it can
    (nothing); killing the process group needs no fd and still happens.
    """
    try:
        tree = _children_map()
    except (OSError, psutil.Error) as exc:
        log.warning("cannot list the children of pid %d: %s", pid, exc)
        return []
    found: list[psutil.Process] = []
    todo = list(tree.get(pid, ()))
    while todo:
        child = todo.pop()
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(child))
        todo.extend(tree.get(child, ()))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_all(procs: Iterable[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


async def stop_tree(
    proc: asyncio.subprocess.Process,
    sig: int,
    timeout: float,
    *,
    name: str = "",
    also: Callable[[int], None] | None = None,
) -> int:
    """Send sig to the process group, wait up to timeout, then SIGKILL the whole tree; reap it.

    Returns only once the process is reaped: a SIGKILL that does not take (a process stuck in
    the kernel) is repeated, with growing pauses, rather than given up on.
    """
    pid = proc.pid
    tree = descendants(pid)
    if proc.returncode is None:
        for each in (sig, signal.SIGCONT):
            # SIGCONT right behind the stop signal, as systemd sends it: a stopped (SIGSTOPped,
            # traced) process cannot act on SIGTERM, and would hold its requests until SIGKILL.
            _signal_group(pid, each)
            if also is not None:
                also(each)  # the rest of the instance (its cgroup), escaped grandchildren too
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            log.warning(
                "%s (pid=%d) ignored %s for %.1fs; sending SIGKILL",
                name,
                pid,
                signal.Signals(sig).name,
                timeout,
            )
    pause = _KILL_RETRY
    while True:
        reap_group(pid, [*tree, *descendants(pid)])
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            async with asyncio.timeout(pause):
                return await asyncio.shield(proc.wait())
        except TimeoutError:
            log.warning("%s (pid=%d) still alive after SIGKILL; killing again", name, pid)
            pause = min(pause * 2, _KILL_RETRY_MAX)


def reap_group(pgid: int, extra: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL what is left of a process group and of a known set of descendants.

    Safe after the leader exited: Linux does not hand out a pid that is still some group's id.
    """
    _signal_group(pgid, signal.SIGKILL)
    _kill_all(extra)


def kill_stale(token: str, pids: Mapping[int, float], grace: float = 3.0) -> int:
    """Stop processes left by a dead daemon: those carrying its token, and recorded (pid, start time).

    A pid whose start time differs was recycled by the OS and is not touched.
    """
    victims: dict[int, psutil.Process] = {}
    for pid, started in pids.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 0.01:
                victims[pid] = p
    for p in psutil.process_iter():
        if p.pid in victims or p.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get("CORRAL_TOKEN") == token:
                victims[p.pid] = p
    if not victims:
        return 0
    procs = list(victims.values())
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    alive = wait_gone(procs, grace)
    _kill_all(alive)
    wait_gone(alive, grace)
    log.warning("stopped %d process(es) left by a previous daemon", len(procs))
    return len(procs)


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (blocking) until each process has exited; returns those still alive at `timeout`.

    A zombie counts as gone: an orphan we killed is reaped by init, not by us, and an init
    that is slow to reap (or a container's pid 1 that never does) must not hold a stop up.
    """
    alive = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
