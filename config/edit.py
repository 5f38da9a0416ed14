"""In-place edits of corral.toml that keep the user's comments and layout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError

from config.errors import ConfigError


def set_instances(path: Path, service: str, count: int) -> None:
    """Write `services.<service>.instances = count` into `path`, touching nothing else."""
    key = f"services.{service}.instances"
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(path, key, f"expected an integer >= 0, got {count!r}")
    try:
        # newline="" keeps CRLF files CRLF.
        with path.open(encoding="utf-8", newline="") as stream:
            text = stream.read()
        document = tomlkit.parse(text)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read: {exc}") from None
    except ParseError as exc:
        raise ConfigError(path, "", str(exc)) from None
    services: Any = document.get("services")
    if not isinstance(services, dict) or not isinstance(services.get(service), dict):
        raise ConfigError(path, f"services.{service}", "no such service")
    services[service]["instances"] = count
    _replace(path, tomlkit.dumps(document))


def _replace(path: Path, text: str) -> None:
    # Write-then-rename: a crash mid-write must not leave a truncated config behind.
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
