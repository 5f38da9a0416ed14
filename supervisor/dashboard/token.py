"""The dashboard's TCP token: a 0600 file in the state dir, reused across daemon restarts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

_VALID = re.compile(r"[A-Za-z0-9_-]{32,128}")


def new_token() -> str:
    """256 random bits, URL-safe (it travels in a URL fragment)."""
    return secrets.token_urlsafe(32)


class TokenFile:
    """Owns the token: load it, create it on first use, rotate it on request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = ""

    def load(self) -> str:
        """The token in the file, or a new one written there (0600) when absent or unusable."""
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return self.rotate()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(f"{self.path} is not a regular file owned by uid {os.getuid()}")
        if info.st_mode & 0o077:
            # Readable by others means anyone on the machine may have the token: replace it.
            log.warning("%s was readable by other users; writing a new token", self.path)
            return self.rotate()
        token = self.path.read_text().strip()
        if not _VALID.fullmatch(token):
            log.warning("%s holds no usable token; writing a new one", self.path)
            return self.rotate()
        self.token = token
        return token

    def rotate(self) -> str:
        """Write a new token (atomically, never briefly readable by others) and use it."""
        token = new_token()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self.token = token
        return token
