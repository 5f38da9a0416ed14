"""A service's environment: `env_file` entries overlaid by the `env` table."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

from config.table import Table, show


def read_environment(table: Table, cwd: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """`env_file` files in order, then the `env` table, which wins."""
    env: dict[str, str] = {}
    for path in env_file_paths(table, cwd):
        st = table.stat("env_file", path)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise table.error("env_file", f"file {path} does not exist")
        try:
            env.update(read_env_file(path, environ))
        except (OSError, UnicodeDecodeError) as exc:
            raise table.error("env_file", f"cannot read {path}: {exc}") from None
    raw = table.data.get("env", {})
    if not isinstance(raw, dict):
        raise table.expected("env", "a table of NAME = value")
    for key, value in raw.items():
        if not key or "=" in key or "\0" in key:
            raise table.error("env", f"expected a variable name without '=', got {show(key)}")
        if isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            env[key] = str(value)
        else:
            raise table.error(f"env.{key}", f"expected a string or number, got {show(value)}")
    return env


def env_file_paths(table: Table, cwd: Path) -> tuple[Path, ...]:
    """The service's `env_file` entries as absolute paths, in order."""
    return tuple(
        table.join("env_file", name, cwd, resolve=True) for name in table.strings("env_file")
    )


def read_env_file(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """One env file's entries, resolved as `load` resolves them."""
    # Imported here: only configs with an env_file pay for python-dotenv (CLI start-up, RSS).
    from dotenv import dotenv_values
    from dotenv.variables import parse_variables

    # dotenv's own interpolation reads os.environ; resolving here with the same rules
    # (earlier file entries win over the environment) honours the `environ` passed to load().
    resolved: dict[str, str] = {}
    for key, value in dotenv_values(path, interpolate=False).items():
        if value is None:
            # A bare `NAME` line passes the variable through from the environment, as compose does.
            if key in environ:
                resolved[key] = environ[key]
            continue
        scope: dict[str, str | None] = {**environ, **resolved}
        resolved[key] = "".join(atom.resolve(scope) for atom in parse_variables(value))
    return resolved
