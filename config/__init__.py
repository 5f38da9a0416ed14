"""Read, check, render and edit corral.toml; the output is an immutable `Plan`."""

from pathlib import Path

from config.daemon import socket_of
from config.errors import ConfigError
from config.load import find_config, load
from config.render import plan_to_json, render
from config.units import parse_duration, parse_size


def set_instances(path: Path, service: str, count: int) -> None:
    """Write `services.<service>.instances = count`, keeping the file's comments and layout."""
    # Imported here: tomlkit is only needed by `scale --save`, not in every daemon's memory.
    from config.edit import set_instances as edit

    edit(path, service, count)


__all__ = [
    "ConfigError",
    "find_config",
    "load",
    "parse_duration",
    "parse_size",
    "plan_to_json",
    "render",
    "set_instances",
    "socket_of",
]
