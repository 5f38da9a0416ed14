"""cgroup v2, one cgroup per instance, when the daemon has a cgroup it may manage.

A process that double-forks and calls setsid leaves its instance's process group and process
tree, but it cannot leave its cgroup: the kernel puts every child in its parent's cgroup, and
only a writer of `cgroup.procs` can move it out. So an instance in a cgroup of its own can
always be found whole (`cgroup.procs`) and killed whole (`cgroup.kill`).

Layout, under the daemon's own cgroup D (from /proc/self/cgroup):

    D/corral-<daemon pid>-<token>/      the daemon's subtree (nothing else writes here)
        <instance>/                     one per instance life: api.1#3 → "api.1-3"
        daemon/                         the daemon itself, only once `enable()` moved it

D is used only when the daemon may manage it: writable by us, and not a systemd unit's cgroup
unless the unit was started with Delegate=yes (systemd marks such cgroups with the
`trusted.delegate` / `user.delegate` extended attribute). `CORRAL_CGROUP=off` disables
cgroups; `CORRAL_CGROUP=on` skips the systemd check (for a systemd that predates the mark).

Caps (`cgroup = { memory_max, cpu_max, pids_max }` → memory.max, cpu.max, pids.max of each
instance's cgroup) need their controllers: `enable()` makes them available to the instance
cgroups, which cgroup v2 allows only if D itself holds no processes ("no internal
processes"), so the daemon then moves itself into the `daemon/` leaf. A controller D does not
have (none is delegated, or a hybrid host keeps it in cgroup v1) cannot be enabled: the caps
are then not applied, and `enable()` says why. `freeze()` is cgroup.freeze (no controller).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from config.model import CgroupLimits

log = logging.getLogger(__name__)

ENV = "CORRAL_CGROUP"
CPU_PERIOD = 100_000  # µs, cpu.max's default period: cpu_max = 1.5 → "150000 100000"
# A cap's file, and the controller that provides it.
CONTROLLERS = {"memory.max": "memory", "cpu.max": "cpu", "pids.max": "pids"}
_OFF = frozenset({"0", "off", "no", "false"})
_DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")


def mount_point(mounts: str) -> Path | None:
    """The cgroup2 mount point in the text of /proc/self/mounts."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    return None


def own_cgroup(cgroup: str) -> str | None:
    """This process's cgroup v2 path ("/a/b") in the text of /proc/self/cgroup."""
    for line in cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether per-instance cgroups can be used, and why (or why not)."""

    directory: Path | None  # the daemon's own cgroup directory, if usable
    reason: str


def decide(
    mounts: str,
    cgroup: str,
    environ: Mapping[str, str],
    *,
    writable: bool,
    delegated_mark: bool,
) -> Verdict:
    """Pure: may this daemon create cgroups under its own? (inputs read by `detect`)"""
    setting = environ.get(ENV, "").strip().lower()
    if setting in _OFF:
        return Verdict(None, f"disabled by {ENV}={environ[ENV]}")
    mount = mount_point(mounts)
    path = own_cgroup(cgroup)
    if mount is None or path is None:
        return Verdict(None, "no cgroup v2 hierarchy")
    directory = mount / path.lstrip("/")
    if not writable:
        return Verdict(None, f"{directory} is not writable (not delegated to this daemon)")
    unit = directory.name
    if unit.endswith((".service", ".scope")) and not delegated_mark and setting != "on":
        return Verdict(None, f"{unit} is a systemd unit without Delegate=yes")
    return Verdict(directory, f"delegated cgroup {directory}")


def detect(environ: Mapping[str, str] = os.environ) -> Verdict:
    """Read /proc and the cgroup tree, then `decide`."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        return Verdict(None, f"cannot read /proc: {exc}")
    mount, path = mount_point(mounts), own_cgroup(cgroup)
    directory = mount / path.lstrip("/") if mount is not None and path is not None else None
    writable = directory is not None and (
        os.access(directory, os.W_OK | os.X_OK) and os.access(directory / "cgroup.procs", os.W_OK)
    )
    return decide(
        mounts,
        cgroup,
        environ,
        writable=writable,
        delegated_mark=directory is not None and _marked_delegated(directory),
    )


def _marked_delegated(directory: Path) -> bool:
    for name in _DELEGATE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(directory, name) == b"1":
                return True
    return False


def cap_files(caps: CgroupLimits) -> dict[str, str]:
    """Pure: the files and values `caps` writes into an instance's cgroup."""
    files = {}
    if caps.memory_max is not None:
        files["memory.max"] = str(caps.memory_max)
    if caps.cpu_max is not None:
        files["cpu.max"] = f"{round(caps.cpu_max * CPU_PERIOD)} {CPU_PERIOD}"
    if caps.pids_max is not None:
        files["pids.max"] = str(caps.pids_max)
    return files


@dataclass(frozen=True, slots=True)
class Enabled:
    """What `CgroupTree.enable` made available to the instance cgroups, and why not more."""

    controllers: frozenset[str]
    reason: str = ""  # for the controllers asked for but not enabled


class InstanceCgroup:
    """The cgroup of one instance life: where its processes go, and how they all end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Written by the child between fork and exec (see process.spawn): encoded up front.
        self.procs_file = os.fsencode(path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def populated(self) -> bool:
        """Does anything still live here (zombies included)?"""
        try:
            for line in (self.path / "cgroup.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
        except FileNotFoundError:
            return False
        except OSError:
            pass
        return bool(self.pids())

    def adopt(self, pid: int) -> None:
        """Move `pid` in (the child normally moved itself before exec; this is the fallback)."""
        with contextlib.suppress(OSError):
            (self.path / "cgroup.procs").write_text(str(pid))

    def signal(self, sig: int) -> None:
        """Send `sig` to every process in the cgroup."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL everything in the cgroup, at once (cgroup.kill; per pid on kernels < 5.14)."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except FileNotFoundError:
            if self.path.exists():
                self.signal(signal.SIGKILL)
        except OSError as exc:
            log.warning("cannot write %s/cgroup.kill: %s; killing one by one", self.path, exc)
            self.signal(signal.SIGKILL)

    def remove(self) -> bool:
        """rmdir the cgroup; False while processes (or their zombies) still live in it."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", self.path, exc)
            return False
        return True

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or let go on) every process in the cgroup, as SIGSTOP would, unnoticed by them."""
        (self.path / "cgroup.freeze").write_text("1" if frozen else "0")

    def limit(self, control: str, value: str) -> None:
        """Write a controller file (`memory.max`, `cpu.max`, `pids.max`); see `enable`."""
        (self.path / control).write_text(value)


class CgroupTree:
    """The daemon's subtree D/corral-<pid>-<token>: created at start, removed at shutdown."""

    def __init__(self, own: Path, token: str, pid: int | None = None) -> None:
        self.own = own
        self.root = own / f"corral-{os.getpid() if pid is None else pid}-{token}"
        self._leaf: Path | None = None  # where enable() moved the daemon

    @classmethod
    def create(cls, own: Path, token: str) -> CgroupTree:
        tree = cls(own, token)
        tree.root.mkdir()
        return tree

    @staticmethod
    def sweep_abandoned(own: Path) -> int:
        """Remove the empty subtrees of daemons that are gone (killed hard, their project
        deleted: no next daemon of theirs will clean up). Returns how many were removed.

        A subtree that still holds processes is left alone: they are another project's, and
        its next daemon stops them."""
        removed = 0
        for path in own.glob("corral-*-*"):
            pid = path.name.split("-")[1]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists() or not path.is_dir():
                continue
            children = [InstanceCgroup(p) for p in _subdirs(path)]
            if any(c.populated() for c in children) or InstanceCgroup(path).pids():
                continue
            for child in children:
                child.remove()
            with contextlib.suppress(OSError):
                path.rmdir()
                removed += 1
        return removed

    def instance(self, owner: str) -> InstanceCgroup:
        """A new cgroup for one instance life (`owner` like "api.1#3")."""
        path = self.root / owner.replace("#", "-").replace("/", "_")
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        return InstanceCgroup(path)

    def enable(self, controllers: Iterable[str]) -> Enabled:
        """Make `controllers` (of "memory", "cpu", "pids" …) usable in instance cgroups.

        They must be available in D (cgroup.controllers). D must hold no processes for its
        children to get them, so the daemon moves itself into a leaf first — only if it is
        alone in D: another process there is not ours to move.
        """
        asked = set(controllers)
        text = _read(self.own / "cgroup.controllers")
        available = set(text.split())
        wanted = asked & available
        missing = sorted(asked - available)
        reason = ""
        if missing:
            reason = (
                f"no {', '.join(missing)} controller in {self.own} "
                f"(its cgroup.controllers: {text.strip() or 'none'})"
            )
        if not wanted:
            return Enabled(frozenset(), reason)
        others = [p for p in _read(self.own / "cgroup.procs").split() if int(p) != os.getpid()]
        if others:
            return Enabled(
                frozenset(),
                f"{self.own} holds {len(others)} other process(es): the daemon cannot move "
                "aside to give its instances controllers (run it in a cgroup of its own, "
                "e.g. a systemd unit with Delegate=yes)",
            )
        try:
            if self._leaf is None:
                leaf = self.root / "daemon"
                leaf.mkdir(exist_ok=True)
                (leaf / "cgroup.procs").write_text(str(os.getpid()))
                self._leaf = leaf
            change = " ".join(f"+{c}" for c in sorted(wanted))
            (self.own / "cgroup.subtree_control").write_text(change)
            (self.root / "cgroup.subtree_control").write_text(change)
        except OSError as exc:
            return Enabled(frozenset(), f"cannot enable {', '.join(sorted(wanted))}: {exc}")
        return Enabled(frozenset(wanted), reason)

    def remove(self, grace: float = 2.0) -> None:
        """Kill what is left in every instance cgroup and remove the whole subtree."""
        if self._leaf is not None:
            with contextlib.suppress(OSError):
                (self.own / "cgroup.procs").write_text(str(os.getpid()))
        children = [InstanceCgroup(p) for p in _subdirs(self.root)]
        for child in children:
            if child.populated():
                child.kill()
        deadline = time.monotonic() + grace
        while any(child.populated() for child in children) and time.monotonic() < deadline:
            time.sleep(0.01)
        for child in children:
            child.remove()
        with contextlib.suppress(OSError):
            self.root.rmdir()
        if self.root.exists():
            log.warning("cgroup %s still holds processes; left in place", self.root)

    @staticmethod
    def remove_stale(own: Path, token: str) -> None:
        """The subtree a previous daemon (this project's, now dead) left behind."""
        for root in own.glob(f"corral-*-{token}"):
            stale = CgroupTree(own, token)
            stale.root = root
            log.warning("removing cgroup %s left by a previous daemon", root)
            stale.remove()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []
