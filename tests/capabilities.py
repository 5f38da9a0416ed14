"""What the server-operation tests need from the machine: root, systemd's tools, promtool.

As for the view tests (tests/views.py): missing locally, they skip and say what is missing;
in CI, where `CORRAL_REQUIRE` names the capability ("root", "systemd", "promtool"), they fail,
so a green CI run means they really ran. `.ci/setup-serverops` installs the tools.
"""

from __future__ import annotations

import os
import shutil

from .views import require

SETUP = ".ci/setup-serverops"


def require_root() -> None:
    """Switching users, raising hard rlimits: only root may."""
    require("root", None if os.geteuid() == 0 else "the tests run as non-root", "run them as root")


def require_tool(name: str, capability: str) -> str:
    """The path of the program `name` (skip or fail without it)."""
    path = shutil.which(name)
    require(capability, None if path else f"{name} is not installed", f"install it with {SETUP}")
    assert path is not None
    return path
