"""Who an instance runs as (`user` / `group`), and the files that must then be that user's.

Names are resolved when the service is brought up, in the daemon: between fork and exec only
setgroups / setgid / setuid run, with numbers computed here (getpwnam and getgrouplist read
/etc/passwd and NSS, which a freshly forked child of a threaded process must not do).

Dropping privileges needs a daemon running as root; a daemon that is not root refuses the
service with a clear error, unless it already is that user. The user must also be able to
reach the instance's working directory and its interpreter: checked here too, so the error
names the directory in the way instead of a bare "Permission denied" from exec.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from config.model import ServiceSpec
from config.table import show

from .errors import SupervisorError

log = logging.getLogger(__name__)


class RunAsError(SupervisorError):
    """A service's user or group cannot be used (unknown, or the daemon is not root)."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """A resolved user: what the child switches to, and what its environment says."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups (the user's, from /etc/group)
    home: str

    def environ(self) -> dict[str, str]:
        """HOME, USER and LOGNAME of the user (not the daemon's), as su and systemd set them."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def resolve(spec: ServiceSpec) -> RunAs | None:
    """The RunAs of `spec`, or None when it runs as the daemon's own user."""
    if spec.user is None:
        return None
    where = f"services.{spec.name}.user"
    try:
        pw = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
    except KeyError:
        if not spec.user.isdigit():
            raise RunAsError(f"{where}: no user {show(spec.user)} on this machine") from None
        pw = None  # a bare uid with no passwd entry (a container's, say) is still a uid
    uid = pw.pw_uid if pw is not None else int(spec.user)
    gid = _gid(spec, pw)
    name = pw.pw_name if pw is not None else spec.user
    if os.geteuid() != 0:
        if uid == os.geteuid() and gid == os.getegid():
            return None  # already that user: nothing to drop
        raise RunAsError(
            f"{where}: running as {show(spec.user)} needs a daemon running as root, and this one "
            f"runs as uid {os.geteuid()} ({_user_name(os.geteuid())}); start it as root (the "
            "system unit from `corral systemd-unit` does) or remove user/group"
        )
    groups = tuple(os.getgrouplist(name, gid)) if pw is not None else (gid,)
    return RunAs(name=name, uid=uid, gid=gid, groups=groups, home=pw.pw_dir if pw else "/")


def _gid(spec: ServiceSpec, pw: pwd.struct_passwd | None) -> int:
    if spec.group is None:
        if pw is None:
            raise RunAsError(
                f"services.{spec.name}.group: uid {spec.user} has no passwd entry, so it has "
                "no primary group: set group too"
            )
        return pw.pw_gid
    if spec.group.isdigit():
        return int(spec.group)
    try:
        return grp.getgrnam(spec.group).gr_gid
    except KeyError:
        raise RunAsError(
            f"services.{spec.name}.group: no group {show(spec.group)} on this machine"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no passwd entry"


def obstacle(path: Path, who: RunAs) -> str | None:
    """Why `who` cannot reach `path` (a directory without search permission on the way),
    or None. Mode bits only: an ACL that grants more is not seen."""
    path = Path(os.path.abspath(path))
    for directory in [*reversed(path.parents), path]:
        try:
            st = os.stat(directory)
        except OSError as exc:
            return f"cannot look at {directory}: {exc.strerror}"
        if stat.S_ISDIR(st.st_mode) and not _may(st, who, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return (
                f"{who.name} may not enter {directory} (mode {stat.S_IMODE(st.st_mode):04o}, "
                f"owner uid {st.st_uid}, group gid {st.st_gid})"
            )
    return None


def _may(st: os.stat_result, who: RunAs, owner: int, group: int, other: int) -> bool:
    if st.st_uid == who.uid:
        return bool(st.st_mode & owner)
    if st.st_gid == who.gid or st.st_gid in who.groups:
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def check_reachable(spec: ServiceSpec, who: RunAs, directories: Iterable[Path]) -> None:
    """Raise RunAsError if `who` cannot enter one of `directories` (its working directory,
    its venv, the interpreter's)."""
    for directory in directories:
        why = obstacle(directory, who)
        if why is not None:
            raise RunAsError(
                f"services.{spec.name}.user: {who.name} cannot reach {directory}: {why}"
            )


def chown_tree(root: Path, who: RunAs) -> None:
    """Make `root` and everything under it `who`'s (a venv the instances may write into:
    __pycache__, a pip install at run time). Symlinks are changed, not followed."""
    try:
        if os.lstat(root).st_uid == who.uid:
            return  # done by an earlier start: a venv is only ever owned by one user
    except FileNotFoundError:
        return
    # The tree may belong to the user of a previous setting whose instances still run: walked
    # by path, a directory they swap for a symlink mid-walk would get root to chown whatever
    # it points to. fwalk goes by directory descriptors and never follows a symlink.
    for _, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, who.uid, who.gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chown(root, who.uid, who.gid, follow_symlinks=False)
    log.info("%s: now owned by %s", root, who.describe())
