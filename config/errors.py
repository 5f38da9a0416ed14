"""The one exception config/ raises: which file, which key, what went wrong."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A corral.toml problem, located by file and dotted key path ("" for the whole file)."""

    def __init__(self, file: Path | None, key: str, message: str) -> None:
        # Passing every field to Exception keeps the error picklable (args rebuild it).
        super().__init__(file, key, message)
        self.file = file
        self.key = key
        self.message = message

    def __str__(self) -> str:
        parts = (str(self.file) if self.file is not None else "", self.key, self.message)
        return ": ".join(part for part in parts if part)
