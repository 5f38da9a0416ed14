"""Isolated, hash-cached virtualenvs: one per service and (interpreter, requirements) key.

A venv is built *at its final path* and counts as complete only once the marker file is
written, last. It is not built in a temp dir and renamed: `uv venv` and `python -m venv` write
the absolute path into `bin/activate` and into every console script's shebang, so a renamed venv
has broken `bin/` scripts (`uv venv --relocatable` would fix uv's scripts but not the pip
fallback's). A dir without the marker is a crashed or cancelled build and is wiped before the
next build, so a half-built venv is never handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

from config.model import ServiceSpec

from .errors import VenvError
from .pipconfig import uv_config_from_pip

__all__ = ["MARKER", "VenvBuilder", "VenvError"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]

MARKER = ".corral-complete"
_KEY_LEN = 16
_TAIL_LINES = 20
_HISTORY_LINES = 500
_KEEP = 2  # the venv just built plus the previous one, which older instances may still run from
# The daemon's own interpreter settings, which must not leak into the venv being built.
_DROP_ENV = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "__PYVENV_LAUNCHER__")
_PROBE = "import sys; print(sys.version); print(sys.executable)"


class VenvBuilder:
    """Builds and caches the venvs under `root` (<state_dir>/venvs)."""

    def __init__(
        self,
        root: Path,
        *,
        use_uv: bool | None = None,
        spawn: Spawn | None = None,
        cache: Path | None = None,
    ) -> None:
        self.root = root
        # uv's and pip's download cache (the unit's CacheDirectory=); None: their own default.
        self.cache = cache
        # Who owns build tasks: the daemon's nursery; used alone (tests), plain tasks.
        self._spawn: Spawn = spawn or _plain_task
        self._uv = _find_uv() if use_uv is not False else None
        if use_uv and self._uv is None:
            raise VenvError("uv was requested but is not installed")
        self._builds: dict[Path, _Build] = {}
        self.build_seconds: dict[str, float] = {}  # service → its last build's duration (/metrics)
        # Interpreter identity by (python, cwd), re-checked against the binaries' stat so an
        # upgraded interpreter is noticed without running `python -c` for every ensure().
        self._interpreters: dict[tuple[str, str], tuple[tuple[object, ...], str, str]] = {}

    # --- naming ------------------------------------------------------------------------------

    def key(self, spec: ServiceSpec) -> str:
        """Short hex digest of the interpreter's exact version and path and the requirements."""
        version, executable = self._interpreter(spec)
        digest = hashlib.sha256()
        for part in (version, os.path.realpath(executable)):
            digest.update(part.encode())
            digest.update(b"\0")
        if spec.requirements is not None:
            for path in _requirement_files(spec.requirements):
                digest.update(str(path).encode())
                digest.update(b"\0")
                digest.update(path.read_bytes() if path.is_file() else b"<missing>")
                digest.update(b"\0")
        return digest.hexdigest()[:_KEY_LEN]

    def path_for(self, spec: ServiceSpec) -> Path:
        return self.root / f"{spec.name}-{self.key(spec)}"

    # --- building ----------------------------------------------------------------------------

    async def ensure(self, spec: ServiceSpec, progress: Progress) -> Path:
        """Return the venv for `spec`, building it first unless a complete one exists."""
        # key() may run the interpreter once and reads the requirements: keep it off the loop.
        path = await asyncio.to_thread(self.path_for, spec)
        build = self._builds.get(path)
        if build is None:
            if _is_complete(path):
                # "Newest" means most recently used: a cache hit must not be pruned next time.
                os.utime(path / MARKER)
                return path
            build = self._builds[path] = _Build(progress)
            build.task = self._spawn(self._run(spec, path, build), f"venv:{path.name}")
        else:
            build.subscribe(progress)
        # Shielded: one caller giving up (its instance was stopped) must not kill the build the
        # others wait on; aclose() cancels the build itself.
        return await asyncio.shield(build.result)

    async def aclose(self) -> None:
        """Cancel builds in flight (their half-built dirs are removed)."""
        tasks = [b.task for b in self._builds.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _run(self, spec: ServiceSpec, path: Path, build: _Build) -> None:
        # The build's outcome goes to its waiters, never up into the task's owner: a failed
        # build fails that service alone.
        try:
            build.result.set_result(await self._build(spec, path, build))
        except asyncio.CancelledError:
            build.result.cancel()
            raise
        except Exception as exc:
            log.debug("virtualenv build %s failed: %s", path.name, exc)
            build.result.set_exception(exc)
        finally:
            self._builds.pop(path, None)

    async def _build(self, spec: ServiceSpec, path: Path, build: _Build) -> Path:
        version, executable = await asyncio.to_thread(self._interpreter, spec)
        tool = "uv" if self._uv else "venv+pip"
        log.info("%s: building virtualenv %s with %s", spec.name, path, tool)
        build.emit(f"building virtualenv {path.name} ({tool}, Python {version.split()[0]})")
        started = time.monotonic()
        try:
            if await asyncio.to_thread(_clear, self.root, path, spec.cwd):
                build.emit(f"removed incomplete virtualenv {path.name} left by an earlier run")
            for argv in self._commands(spec, executable, path):
                await _run(argv, cwd=spec.cwd, env=self._environ(), build=build)
            await asyncio.to_thread(_write_marker, path, spec, version, executable)
        except BaseException:
            # Failed or cancelled: nothing without a marker is ever used, but don't leave
            # hundreds of MB behind either.
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, path, ignore_errors=True))
            raise
        took = self.build_seconds[spec.name] = time.monotonic() - started
        build.emit(f"virtualenv ready in {took:.1f}s")
        log.info("%s: virtualenv %s ready", spec.name, path)
        await self._prune(spec.name, keep=path)
        return path

    def _commands(self, spec: ServiceSpec, executable: str, path: Path) -> Iterator[list[str]]:
        req = spec.requirements
        if req is None:
            install: list[str] = []
        elif req.name == "pyproject.toml":
            # Editable: the key covers pyproject.toml only, so a copy of the project's code
            # would go stale on every edit; editable keeps the venv pointing at the source.
            install = ["-e", str(req.parent)]
        else:
            install = ["-r", str(req)]
        python = str(path / "bin" / "python")
        if self._uv is not None:
            yield [self._uv, "venv", "--no-project", "--python", executable, str(path)]
            if install:
                flags = uv_config_from_pip(os.environ)[1]
                yield [self._uv, "pip", "install", "--python", python, *flags, *install]
        else:
            yield [executable, "-m", "venv", str(path)]
            if install:
                pip = [python, "-m", "pip", "install", "--progress-bar", "off", "--no-input"]
                yield [*pip, *install]

    def _environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        env["PYTHONUNBUFFERED"] = "1"  # stream pip's output line by line
        if self.cache is not None:  # (an explicit UV_CACHE_DIR / PIP_CACHE_DIR still wins)
            env.setdefault("UV_CACHE_DIR", str(self.cache / "uv"))
            env.setdefault("PIP_CACHE_DIR", str(self.cache / "pip"))
        if self._uv is not None:
            env.setdefault("UV_NO_PROGRESS", "1")
            for name, value in uv_config_from_pip(os.environ)[0].items():
                env.setdefault(name, value)
        return env

    async def _prune(self, service: str, keep: Path) -> None:
        """Remove this service's older venvs, keeping `keep` and the newest other one."""
        pattern = re.compile(rf"{re.escape(service)}-[0-9a-f]{{{_KEY_LEN}}}")
        complete: list[tuple[float, Path]] = []
        doomed: list[Path] = []
        for child in self.root.iterdir():
            if child == keep or not pattern.fullmatch(child.name) or child in self._builds:
                continue
            try:
                complete.append(((child / MARKER).stat().st_mtime, child))
            except FileNotFoundError:
                doomed.append(child)  # a crashed build of an older key
        complete.sort(reverse=True)
        doomed += [p for _, p in complete[_KEEP - 1 :]]
        for path in doomed:
            log.info("%s: removing old virtualenv %s", service, path)
            await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    def _interpreter(self, spec: ServiceSpec) -> tuple[str, str]:
        """(sys.version, sys.executable) of `spec.python`, as run from the service's cwd."""
        found = shutil.which(spec.python, path=os.environ.get("PATH"))
        if found is None:
            raise VenvError(f"{spec.name}: python interpreter {spec.python!r} not found")
        memo_key = (spec.python, str(spec.cwd))
        memo = self._interpreters.get(memo_key)
        if memo is not None and memo[0] == _stat_id(found, memo[2]):
            return memo[1], memo[2]
        cwd = spec.cwd if spec.cwd.is_dir() else None  # pyenv shims pick a version per cwd
        try:
            out = subprocess.run(
                [found, "-c", _PROBE], cwd=cwd, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VenvError(f"{spec.name}: cannot run {spec.python!r}: {exc}") from exc
        lines = out.stdout.splitlines()
        if out.returncode != 0 or len(lines) < 2:
            raise VenvError(f"{spec.name}: {spec.python!r} failed: {out.stderr.strip()[-500:]}")
        version, executable = lines[0], lines[-1]
        self._interpreters[memo_key] = (_stat_id(found, executable), version, executable)
        return version, executable


class _Build:
    """One build in flight, and the progress callbacks of everyone waiting on it."""

    def __init__(self, progress: Progress) -> None:
        self.task: asyncio.Task[None]  # set right after, by VenvBuilder.ensure
        self.result: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        # Retrieved here so a build whose every waiter gave up doesn't log "exception was
        # never retrieved"; the waiters still get it through their shield.
        self.result.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._subscribers = [progress]
        # Replayed to late joiners so every waiting instance's log shows the whole build.
        self._history: deque[str] = deque(maxlen=_HISTORY_LINES)

    def subscribe(self, progress: Progress) -> None:
        # Equality, not identity: `sink.write` is a new bound method each time it is named, and
        # two instances sharing one sink must not see every line twice.
        if any(s == progress for s in self._subscribers):
            return
        self._subscribers.append(progress)
        _call(progress, "joining the virtualenv build already in progress")
        for line in self._history:
            _call(progress, line)

    def emit(self, line: str) -> None:
        self._history.append(line)
        for progress in self._subscribers:
            _call(progress, line)


def _call(progress: Progress, line: str) -> None:
    try:
        progress(line)
    except Exception:
        log.exception("venv progress callback failed")


async def _run(argv: list[str], *, cwd: Path, env: Mapping[str, str], build: _Build) -> None:
    """Run one build step, streaming its output; VenvError with the output's tail on failure."""
    build.emit("$ " + " ".join(argv))
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # pip spawns build backends: cancel must kill them all
            limit=1 << 20,
        )
    except OSError as exc:
        raise VenvError(f"cannot run {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    try:
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            tail.append(line)
            build.emit(line)
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    if code != 0:
        name = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:3]))
        output = "\n".join(tail)
        raise VenvError(f"`{name} …` exited with status {code}:\n{output}")


def _clear(root: Path, path: Path, cwd: Path) -> bool:
    """Make way for a build at `path`; True if a crashed build's leftovers were removed."""
    if not cwd.is_dir():
        raise VenvError(f"working directory {cwd} does not exist")
    root.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.rmtree(path)
        return True
    return False


def _is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def _write_marker(path: Path, spec: ServiceSpec, version: str, executable: str) -> None:
    info = {
        "service": spec.name,
        "python": executable,
        "version": version,
        "requirements": str(spec.requirements) if spec.requirements else None,
        "built_at": time.time(),
    }
    tmp = path / (MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MARKER)  # the marker appears whole or not at all


def _stat_id(*paths: str) -> tuple[object, ...]:
    ids: list[object] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            ids.append(None)
        else:
            ids.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(ids)


_INCLUDE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")


def _requirement_files(first: Path) -> list[Path]:
    """`first` and the files it pulls in with -r / -c, so editing an included file rebuilds."""
    seen: list[Path] = []
    todo = [first]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        if path.name == "pyproject.toml" or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = _INCLUDE.match(line)
            if match and "://" not in match.group(1):
                todo.append((path.parent / match.group(1)).resolve())
    return seen


def _plain_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro, name=name)


def _find_uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return None
