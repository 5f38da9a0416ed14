"""pip's configuration mapped to uv's, so uv resolves from the same places `pip install` would.

uv reads only its own settings (UV_* and uv.toml), not pip.conf or PIP_*. A user behind a
mirror or a proxy has configured pip, so mirror those settings into uv's variables. Explicit
UV_* settings still win (the caller only sets what is unset).
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# pip option → (uv variable, uv's list separator or None for a single value).
_PIP_TO_UV: dict[str, tuple[str, str | None]] = {
    "index-url": ("UV_INDEX_URL", None),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "trusted-host": ("UV_INSECURE_HOST", " "),
    "constraint": ("UV_CONSTRAINT", " "),
    "cert": ("SSL_CERT_FILE", None),
    "client-cert": ("SSL_CLIENT_CERT", None),
    "timeout": ("UV_HTTP_TIMEOUT", None),
    "default-timeout": ("UV_HTTP_TIMEOUT", None),
    "proxy": ("HTTPS_PROXY", None),
}
# Where the user configures uv itself; any of these means "leave uv alone".
_UV_INDEX_VARS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL")
_TRUE = {"1", "true", "yes", "on"}


def pip_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """pip's effective install options from its config files and PIP_* variables.

    Same files and precedence as pip: global (XDG_CONFIG_DIRS, /etc), then user (unless
    PIP_CONFIG_FILE names an existing file), then PIP_CONFIG_FILE; `[install]` beats
    `[global]`; PIP_* variables beat every file. PIP_CONFIG_FILE=os.devnull disables files.
    """
    env_file = environ.get("PIP_CONFIG_FILE")
    files: list[str] = []
    if env_file != os.devnull:
        xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        files += [os.path.join(d, "pip", "pip.conf") for d in xdg_dirs.split(os.pathsep) if d]
        files.append("/etc/pip.conf")
        if not (env_file and os.path.exists(env_file)):
            home = environ.get("HOME") or os.path.expanduser("~")
            xdg_home = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
            files.append(os.path.join(home, ".pip", "pip.conf"))
            files.append(os.path.join(xdg_home, "pip", "pip.conf"))
        if env_file:
            files.append(env_file)
    sections: dict[str, dict[str, str]] = {"global": {}, "install": {}}
    for file in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(file)
        except (configparser.Error, UnicodeDecodeError) as exc:
            log.warning("ignoring unreadable pip config %s: %s", file, exc)
            continue
        for section, values in sections.items():
            if parser.has_section(section):
                for name, value in parser.items(section):
                    values[name.replace("_", "-")] = value
    settings = {**sections["global"], **sections["install"]}
    for name, value in environ.items():
        if name.startswith("PIP_"):
            settings[name[4:].lower().replace("_", "-")] = value
    return settings


def uv_config_from_pip(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """uv's environment variables and `uv pip install` flags equivalent to pip's configuration.

    Empty when the user has configured uv's indexes (UV_* variables or a uv.toml): then uv's
    own settings are the truth, and pip's must not override them.
    """
    if _uv_configured(environ):
        return {}, []
    pip = pip_settings(environ)
    env: dict[str, str] = {}
    for option, (variable, sep) in _PIP_TO_UV.items():
        value = pip.get(option, "").strip()
        if value:
            env[variable] = sep.join(value.split()) if sep else value
    if "HTTPS_PROXY" in env:
        env["HTTP_PROXY"] = env["HTTPS_PROXY"]  # pip's --proxy covers both schemes
    if "UV_EXTRA_INDEX_URL" in env:
        # pip picks the best version across all its indexes; uv by default stops at the first
        # index that has the package (and asks extra indexes first). Match pip.
        env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    # uv reads no variable for this one (checked with uv 0.13), only the flag.
    flags = ["--no-index"] if pip.get("no-index", "").strip().lower() in _TRUE else []
    return env, flags


def _uv_configured(environ: Mapping[str, str]) -> bool:
    if any(environ.get(name) for name in _UV_INDEX_VARS):
        return True
    if environ.get("UV_CONFIG_FILE"):
        return True
    home = environ.get("HOME") or os.path.expanduser("~")
    xdg_home = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    xdg_dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    candidates = [os.path.join(xdg_home, "uv", "uv.toml"), "/etc/uv/uv.toml"]
    candidates += [os.path.join(d, "uv", "uv.toml") for d in xdg_dirs if d]
    return any(os.path.isfile(c) for c in candidates)
