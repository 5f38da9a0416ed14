"""Watch mode: code changes roll a service, requirements rebuild its venv, corral.toml reloads."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from watchfiles import Change, DefaultFilter, awatch

from config.model import Plan, ServiceSpec

from .errors import SupervisorError

if TYPE_CHECKING:
    from .daemon import Daemon
    from .reload import Reloader

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("**/*.py",)
# Editors save in bursts (write temp, rename, touch): one restart per burst, not per event.
DEBOUNCE_MS = 300


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatch(rel, pattern):
            return True
        # "**/*.py" should also match "app.py" at the top of the service's directory.
        if pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]):
            return True
    return False


@dataclass(slots=True)
class Actions:
    """What one batch of file changes asks for."""

    reload: bool = False
    rebuild: set[str] = field(default_factory=set)  # requirements changed: new venv, then roll
    restart: set[str] = field(default_factory=set)  # code changed: roll


def watched(spec: ServiceSpec, everything: bool) -> tuple[str, ...]:
    """Patterns watched for a service: its own `watch`, or the defaults under `up --watch`."""
    if spec.watch:
        return spec.watch
    return DEFAULT_PATTERNS if everything else ()


def classify(plan: Plan, paths: Iterable[Path], everything: bool) -> Actions:
    """Pure: map changed paths to reload / rebuild / restart actions."""
    actions = Actions()
    for path in paths:
        if path == plan.path:
            actions.reload = everything
            continue
        for spec in plan.services.values():
            if spec.requirements is not None and path == spec.requirements and spec.venv:
                if spec.watch or everything:
                    actions.rebuild.add(spec.name)
                continue
            patterns = watched(spec, everything)
            if not patterns:
                continue
            try:
                rel = path.relative_to(spec.cwd).as_posix()
            except ValueError:
                continue
            if _matches(rel, patterns) and not _matches(rel, spec.watch_ignore):
                actions.restart.add(spec.name)
    actions.restart -= actions.rebuild
    return actions


class _Filter(DefaultFilter):
    """watchfiles' defaults (.git, __pycache__, editor swap files) plus Corral's state dirs."""

    def __init__(self, state_dir: Path, root: Path | None = None) -> None:
        super().__init__()
        # Our own state dir, and the directory's `.corral/`: the state of every config in it
        # (another config's daemon writes logs and builds venvs there all the time).
        ignored = [state_dir] if root is None else [state_dir, root / ".corral"]
        self._ignored = tuple(str(path) + os.sep for path in ignored)

    def __call__(self, change: Change, path: str) -> bool:
        return not path.startswith(self._ignored) and super().__call__(change, path)


def _roots(plan: Plan, everything: bool) -> list[Path]:
    roots = {plan.path.parent}
    for spec in plan.services.values():
        if everything or spec.watch:
            roots.add(spec.cwd)
    # Nested roots would report the same change twice.
    return sorted(r for r in roots if not any(o != r and o in r.parents for o in roots))


async def watch_project(daemon: Daemon, reloader: Reloader, *, everything: bool = True) -> None:
    """Run until cancelled; apply each debounced batch of changes."""
    plan = daemon.plan
    stop = asyncio.Event()
    try:
        async for changes in awatch(
            *_roots(plan, everything),
            watch_filter=_Filter(plan.daemon.state_dir, plan.path.parent),
            debounce=DEBOUNCE_MS,
            stop_event=stop,
        ):
            actions = classify(daemon.plan, (Path(p) for _, p in changes), everything)
            try:
                await apply(daemon, reloader, actions)
            except SupervisorError as exc:
                log.error("watch: %s", exc)
    except Exception:  # watchfiles failed (inotify limits …): supervision carries on without it
        log.exception("watch mode stopped")


async def apply(daemon: Daemon, reloader: Reloader, actions: Actions) -> None:
    if actions.reload:
        log.info("watch: %s changed, reloading", daemon.plan.path.name)
        await reloader.reload()
    for name in sorted(actions.rebuild | actions.restart):
        service = daemon.services.get(name)
        if service is None:
            continue
        if name in actions.rebuild:
            # The restart builds the new venv first; the old one serves until then.
            log.info("watch: %s requirements changed, rebuilding its venv", name)
        log.info("watch: %s changed, rolling restart", name)
        await daemon.restart([name], rolling=True)
