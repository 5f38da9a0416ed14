"""Read, check, render and edit corral.toml; the output is an immutable `Plan`."""

from config.daemon import socket_of
from config.edit import set_instances
from config.errors import ConfigError
from config.load import find_config, load
from config.render import plan_to_json, render
from config.units import parse_duration, parse_size

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
