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
        text = ": ".join(part for part in parts if part)
        # Keys and values quoted in messages come from the file: a newline or a terminal
        # escape in one must not turn "one clear line" into several, or into control codes.
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
