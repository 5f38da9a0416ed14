"""Durations ("1m30s") and sizes ("10MB") as written in corral.toml, both ways."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
# Binary multiples, as nginx and the model defaults (64 KB headers = 65536) use them.
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: str | int | float) -> float:
    """Seconds in "500ms", "2s", "1m", "1h", "1m30s" or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_parts(text, value)
    if not seconds >= 0 or seconds == float("inf"):  # also rejects NaN
        raise ValueError(f"not a duration: {value!r}")
    return seconds


def _parse_duration_parts(text: str, value: str) -> float:
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"not a duration: {value!r}")
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"not a duration: {value!r}")
    return total


def parse_size(value: str | int) -> int:
    """Bytes in "10MB", "512k", "64KiB", "0" or a plain integer (K = 1024)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a size: {value!r}")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return round(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def format_duration(seconds: float) -> str:
    """The shortest corral.toml spelling of `seconds`: 0.5 -> "500ms", 90 -> "1m30s"."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes == 0 or rest != int(rest):
        return f"{seconds:g}s"
    hours, minutes = divmod(int(minutes), 60)
    parts = (
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{rest:g}s" if rest else "",
    )
    return "".join(parts)


def format_size(size: int) -> str:
    """A readable spelling of `size` bytes that parse_size reads back exactly."""
    for unit in ("TB", "GB", "MB", "KB"):
        factor = _SIZE_UNITS[unit[0].lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
