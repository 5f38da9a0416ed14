"""Typed reads from one TOML table; every error names the file and the dotted key path."""

from __future__ import annotations

import datetime
import difflib
import enum
import json
import os
import shlex
from collections.abc import Collection
from pathlib import Path
from typing import TypeVar

from config.errors import ConfigError
from config.units import parse_duration, parse_size

E = TypeVar("E", bound=enum.Enum)

# No setting needs a longer wait; longer ones are typos ("999999h") or overflow asyncio's timers.
MAX_DURATION = 24 * 3600.0


def show(value: object) -> str:
    """`value` spelled as in TOML, shortened, for "got ..." in error messages."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, datetime.date | datetime.time):
        text = value.isoformat()
    elif isinstance(value, int) and value.bit_length() > 14_000:
        # str() of an int past 4,300 digits raises (Python's int-to-str limit).
        text = f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_key(key: str, allowed: Collection[str]) -> str:
    """The "unknown key" message, with the closest allowed key as a hint."""
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}"


class Table:
    """One TOML table under validation; keys outside `allowed` are rejected up front."""

    def __init__(
        self, data: object, path: str, file: Path | None, allowed: Collection[str]
    ) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"expected a table, got {show(data)}")
        self.data: dict[str, object] = data
        self.path = path
        self.file = file
        for key in data:
            if key not in allowed:
                raise ConfigError(file, path, unknown_key(key, allowed))

    def key(self, name: str) -> str:
        """Dotted path of `name` inside this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        """A ConfigError located at key `name` of this table."""
        return ConfigError(self.file, self.key(name), message)

    def expected(self, name: str, what: str) -> ConfigError:
        """The standard "expected X, got Y" error for the value at `name`."""
        return self.error(name, f"expected {what}, got {show(self.data[name])}")

    def has(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, default: str) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str):
            raise self.expected(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return self.text(name, "") if name in self.data else None

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.expected(name, "true or false")
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.data.get(name, default)
        # bool is an int subclass: `instances = true` must not mean 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise self.expected(name, f"an integer {bound}")
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        """An integer or float from `minimum` to `maximum` (a ratio, a target)."""
        value = self.data.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not minimum <= value <= maximum  # also rejects NaN
        ):
            raise self.expected(name, f"a number from {minimum:g} to {maximum:g}")
        return float(value)

    def duration(self, name: str, default: float, positive: bool = False) -> float:
        """Seconds, at most MAX_DURATION; `positive` rejects zero (intervals, timeouts)."""
        value = self.data.get(name, default)
        try:
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            seconds = parse_duration(value)
        except (ValueError, OverflowError):
            seconds = -1.0
        if seconds < 0 or (positive and seconds == 0) or seconds > MAX_DURATION:
            bounds = "more than 0, at most 24h" if positive else "at most 24h"
            raise self.expected(name, f'a duration like "2s" ({bounds})')
        return seconds

    def size(self, name: str, default: int) -> int:
        value = self.data.get(name, default)
        try:
            if not isinstance(value, str | int):
                raise ValueError(value)
            return parse_size(value)
        except (ValueError, OverflowError):
            raise self.expected(name, 'a size like "10MB"') from None

    def filepath(self, name: str, default: str, root: Path, *, resolve: bool = False) -> Path:
        """The path at `name`, relative to `root` (the config file's directory)."""
        return self.join(name, self.text(name, default), root, resolve=resolve)

    def join(self, name: str, text: str, root: Path, *, resolve: bool = False) -> Path:
        """`root / text` with `~` expanded (and symlinks resolved); errors name key `name`."""
        if "\0" in text:
            raise self.error(name, f"expected a path without NUL characters, got {show(text)}")
        try:
            path = root / Path(text).expanduser()
            return path.resolve() if resolve else path
        except RuntimeError as exc:  # "~someone" with no such user; a symlink loop (3.11)
            raise self.error(name, f"cannot use {show(text)}: {exc}") from None
        except OSError as exc:
            raise self.error(name, f"cannot use {show(text)}: {exc.strerror or exc}") from None

    def stat(self, name: str, path: Path) -> os.stat_result | None:
        """`path`'s stat, None if it does not exist; an OS error names the key `name`."""
        try:
            return path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise self.error(name, f"cannot access {path}: {reason}") from None

    def choice(self, name: str, kind: type[E], default: E) -> E:
        """The enum member whose value is written at `name`."""
        value = self.data.get(name, default.value)
        for member in kind:
            if member.value == value:
                return member
        options = " or ".join(f'"{member.value}"' for member in kind)
        raise self.expected(name, options)

    def strings(self, name: str) -> tuple[str, ...]:
        """An array of strings; a single string counts as a one-item array."""
        value = self.data.get(name, [])
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.expected(name, "an array of strings")
        return tuple(value)

    def argv(self, name: str) -> tuple[str, ...]:
        """A command: a string split like a shell would, or an array of strings; never empty."""
        value = self.data[name]
        if isinstance(value, str):
            try:
                argv = tuple(shlex.split(value))
            except ValueError as exc:  # unbalanced quotes
                raise self.error(name, f"cannot split {show(value)}: {exc}") from None
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            argv = tuple(value)
        else:
            raise self.expected(name, "a command string or an array of strings")
        if not argv or not argv[0]:
            raise self.expected(name, "a non-empty command")
        return argv

    def table(self, name: str, allowed: Collection[str]) -> Table | None:
        """The sub-table at `name`, or None when absent."""
        if name not in self.data:
            return None
        return Table(self.data[name], self.key(name), self.file, allowed)
