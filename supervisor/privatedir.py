"""Directories (and files) only the daemon's user may open: the state dir, the socket fallback.

Made the way tmux and ssh-agent make theirs: mkdir 0700, then look at what is really there
through a descriptor opened with O_NOFOLLOW — a symlink or a directory someone else planted is
refused, and nothing that is not ours is ever chmod-ed (as root, chmod through a planted
`/tmp/corral-0 -> /etc` would lock up /etc).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from .errors import UnsafeDirectory

log = logging.getLogger(__name__)

_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A state dir others may pass through (to reach the venv of a service that runs as another
# user) but not list: what `allow_traversal` makes it, and what make_private_dir accepts.
TRAVERSABLE = 0o711


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) as a directory of ours with mode 0700, or make it so.

    For directories that belong to the project (the state dir): an existing one of ours that is
    too open is tightened; a shared one (world-writable, like /tmp), another user's, or a
    symlink to an open directory is refused.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise UnsafeDirectory(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise UnsafeDirectory(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        fd = os.open(path, _NOFOLLOW)
    except OSError as exc:
        # O_NOFOLLOW | O_DIRECTORY on a symlink fails with ENOTDIR (ELOOP without O_DIRECTORY).
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or not path.is_symlink():
            raise UnsafeDirectory(f"cannot open {path}: {exc.strerror or exc}") from None
        # A symlinked state dir (say, onto a bigger disk) is the user's choice: use it, but
        # only if its target is already private; never chmod through a link.
        _check_link(path)
        return
    try:
        st = os.fstat(fd)
        _check_owner(path, st)
        if st.st_mode & stat.S_IWOTH:
            raise UnsafeDirectory(
                f"{path} is world-writable (a shared directory like /tmp); "
                "give Corral's state a directory of its own"
            )
        if stat.S_IMODE(st.st_mode) not in (0o700, TRAVERSABLE):
            os.fchmod(fd, 0o700)
            log.info("%s was mode %04o; set to 0700", path, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def allow_traversal(path: Path) -> None:
    """Let other users pass through `path` (a private dir of ours), without listing it: mode
    0711. For a service running as another user, whose venv lives under the state dir."""
    try:
        fd = os.open(path, _NOFOLLOW)
    except OSError as exc:
        raise UnsafeDirectory(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_owner(path, st)
        if stat.S_IMODE(st.st_mode) == 0o700:
            os.fchmod(fd, TRAVERSABLE)
            log.info("%s: mode 0711, so services running as other users reach their venvs", path)
    finally:
        os.close(fd)


def private_file(path: Path, flags: int) -> int:
    """os.open `path` with mode 0600 whatever the umask, tightening a file left wider."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def make_shared_tmp_dir(path: Path) -> None:
    """Create or check `/tmp/corral-<uid>`, a directory of ours inside a shared one.

    Strict, like tmux's /tmp/tmux-<uid>: it must be a real directory (not a symlink), owned by
    us, with no group or other permissions. Anything else is refused, never repaired.
    """
    created = True
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        created = False
    except OSError as exc:
        raise UnsafeDirectory(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        fd = os.open(path, _NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeDirectory(
                f"{path} is not a directory of ours (it is a symlink or a file); "
                "someone else may have planted it: remove it"
            ) from None
        raise UnsafeDirectory(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_owner(path, st)
        if created:
            os.fchmod(fd, 0o700)  # whatever the umask took away or left
        else:
            _check_private(path, st)
    finally:
        os.close(fd)


def check_shared_tmp_dir(path: Path) -> None:
    """Refuse to talk through `/tmp/corral-<uid>` if it is not ours (absent is fine)."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeDirectory(
                f"{path} is not a directory of ours (it is a symlink or a file); "
                "someone else may have planted it: remove it"
            )
        _check_private(path, st)


def _check_link(path: Path) -> None:
    try:
        target = os.stat(path)
    except OSError as exc:
        raise UnsafeDirectory(f"cannot open {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(target.st_mode):
        raise UnsafeDirectory(f"{path} is a symlink to something that is not a directory")
    _check_private(path, target, "is a symlink to a directory with")


def _check_owner(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); "
            "someone else may have planted it: remove it"
        )


def _check_private(path: Path, st: os.stat_result, what: str = "has") -> None:
    _check_owner(path, st)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise UnsafeDirectory(
            f"{path} {what} mode {mode:04o}; expected 0700 (chmod 700 it if it is yours)"
        )
