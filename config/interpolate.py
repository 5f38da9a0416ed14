"""Compose-style ${VAR} substitution in every string value of a parsed corral.toml."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from config.errors import ConfigError

# `$$` escapes, `${NAME}` substitutes with optional -, :-, ?, :? modifiers; a bare `$NAME`
# is left alone so shell snippets in commands (`sh -c 'echo $HOME'`) keep working.
_TOKEN = re.compile(
    r"\$(?:(?P<escape>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bad>\{))"
)


def interpolate(
    data: object, environ: Mapping[str, str], file: Path | None, key: str = ""
) -> object:
    """A copy of `data` with every string value expanded; keys are left as written."""
    if isinstance(data, str):
        return expand(data, environ, file, key)
    if isinstance(data, dict):
        return {
            name: interpolate(value, environ, file, f"{key}.{name}" if key else name)
            for name, value in data.items()
        }
    if isinstance(data, list):
        return [interpolate(item, environ, file, f"{key}[{i}]") for i, item in enumerate(data)]
    return data


def expand(text: str, environ: Mapping[str, str], file: Path | None, key: str) -> str:
    """`text` with ${VAR} forms replaced from `environ` and `$$` turned into `$`."""

    def substitute(match: re.Match[str]) -> str:
        if match["escape"]:
            return "$"
        if match["bad"]:
            raise ConfigError(
                file,
                key,
                'expected ${NAME}, ${NAME:-default} or ${NAME:?message} after "$" '
                f'(write "$$" for a literal "$"), got "{text}"',
            )
        name, op, arg = match["name"], match["op"], match["arg"]
        value = environ.get(name)
        # The colon forms treat an empty variable like an unset one, as in the shell.
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if not missing or op is None:
            return value or ""
        if op.endswith("-"):
            return str(arg)
        reason = arg or ("not set" if value is None else "empty")
        raise ConfigError(file, key, f"${{{name}}} is required: {reason}")

    return _TOKEN.sub(substitute, text)
