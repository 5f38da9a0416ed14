"""VenvBuilder: real builds with uv (and once with venv+pip), from a tiny local wheel and six."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from config.model import ServiceSpec
from supervisor.pipconfig import pip_settings, uv_config_from_pip
from supervisor.venv import MARKER, VenvBuilder, VenvError

PYTHON = os.path.realpath(sys.executable)


def make_wheel(dest: Path, name: str = "corral_tiny", version: str = "0.1") -> Path:
    """A pure-Python wheel with a console script, built by hand: no build backend, no network."""
    files = {
        f"{name}/__init__.py": f"def main():\n    print('{name} {version} ok')\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: corral-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
        f"{name}-{version}.dist-info/entry_points.txt": (
            f"[console_scripts]\n{name.replace('_', '-')} = {name}:main\n"
        ),
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record_path = f"{name}-{version}.dist-info/RECORD"
    record.append(f"{record_path},,")
    files[record_path] = "\n".join(record) + "\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def make_spec(tmp_path: Path, requirements: str | None, name: str = "api") -> ServiceSpec:
    cwd = tmp_path / "src"
    cwd.mkdir(exist_ok=True)
    req = None
    if requirements is not None:
        req = cwd / "requirements.txt"
        req.write_text(requirements)
    return ServiceSpec(name=name, command=("true",), cwd=cwd, requirements=req, python=PYTHON)


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    return make_wheel(wheels)


def run(venv: Path, *argv: str) -> str:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def marker_mtime(venv: Path) -> int:
    return (venv / MARKER).stat().st_mtime_ns


async def test_build_then_cache_hit(tmp_path: Path, wheel: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs")
    spec = make_spec(tmp_path, f"six\n{wheel}\n")
    lines: list[str] = []

    venv = await builder.ensure(spec, lines.append)

    assert venv == builder.path_for(spec)
    assert venv.name == f"api-{builder.key(spec)}"
    assert any("six" in line for line in lines), lines  # uv's output was streamed
    assert "six ok" in run(venv, "python", "-c", "import six; print('six ok')")
    # The console script's shebang points at the venv's final path: it runs.
    assert run(venv, "corral-tiny").strip() == "corral_tiny 0.1 ok"

    built = (venv / MARKER).read_text()
    again: list[str] = []
    assert await builder.ensure(spec, again.append) == venv
    assert again == []  # no build step ran
    assert (venv / MARKER).read_text() == built


async def test_concurrent_ensures_share_one_build(tmp_path: Path, wheel: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs")
    spec = make_spec(tmp_path, f"{wheel}\n")
    shared: list[str] = []
    other: list[str] = []

    # The same sink twice (two instances logging to one place) and a second sink.
    results = await asyncio.gather(
        builder.ensure(spec, shared.append),
        builder.ensure(spec, shared.append),
        builder.ensure(spec, other.append),
    )

    assert len(set(results)) == 1
    # One build (two would show two `uv venv` steps), each line once per sink, and every
    # sink sees the whole build however late it joined.
    for lines in (shared, other):
        steps = [line for line in lines if line.startswith("$ ") and " venv " in line]
        assert len(steps) == 1, lines
        assert any("corral-tiny" in line for line in lines), lines


async def test_changed_requirements_rebuild_and_prune(tmp_path: Path, wheel: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs")
    other_service = await builder.ensure(make_spec(tmp_path, None, name="api-v2"), lambda _: None)

    venvs = []
    for extra in ("", "# two\n", "# three\n"):
        spec = make_spec(tmp_path, f"{wheel}\n{extra}")
        venvs.append(await builder.ensure(spec, lambda _: None))
    first, second, third = venvs
    assert len({first, second, third}) == 3  # each requirements text has its own key

    # Kept: the one just built and the previous one (older instances may still run from it).
    assert not first.exists()
    assert _is_usable(second) and _is_usable(third)
    assert _is_usable(other_service)  # "api-" prefix of another service's name: untouched

    # A cache hit counts as use: after reusing `second`, building a fourth keeps `second`.
    await builder.ensure(make_spec(tmp_path, f"{wheel}\n# two\n"), lambda _: None)
    fourth = await builder.ensure(make_spec(tmp_path, f"{wheel}\n# four\n"), lambda _: None)
    assert _is_usable(second) and _is_usable(fourth) and not third.exists()


def _is_usable(venv: Path) -> bool:
    return (venv / MARKER).is_file() and (venv / "bin" / "python").exists()


async def test_missing_package_raises_with_tool_output(tmp_path: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs")
    spec = make_spec(tmp_path, "corral-no-such-package-xyz\n")
    lines: list[str] = []

    with pytest.raises(VenvError) as info:
        await builder.ensure(spec, lines.append)

    message = str(info.value)
    assert "corral-no-such-package-xyz" in message
    assert "not found" in message or "No matching distribution" in message
    assert not builder.path_for(spec).exists()
    assert list((tmp_path / "venvs").iterdir()) == []


async def test_leftover_of_a_crashed_build_is_rebuilt(tmp_path: Path, wheel: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs")
    spec = make_spec(tmp_path, f"{wheel}\n")
    half = builder.path_for(spec)
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("not a python")
    (half / (MARKER + ".tmp")).write_text("{}")  # died while writing the marker
    lines: list[str] = []

    venv = await builder.ensure(spec, lines.append)

    assert venv == half
    assert any("removed incomplete virtualenv" in line for line in lines)
    assert run(venv, "corral-tiny").strip() == "corral_tiny 0.1 ok"


SLOW_BACKEND = """
import os, pathlib, time
def get_requires_for_build_wheel(config_settings=None):
    return []
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    pathlib.Path(os.environ["CORRAL_TEST_STARTED"]).write_text(str(os.getpid()))
    while True:  # stands in for a long compile; only a kill ends it
        time.sleep(0.05)
"""


async def test_cancelled_build_leaves_nothing_and_kills_the_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "slowpkg"
    project.mkdir()
    (project / "slow_backend.py").write_text(SLOW_BACKEND)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "slowpkg"\nversion = "0.1"\n'
        '[build-system]\nrequires = []\nbuild-backend = "slow_backend"\nbackend-path = ["."]\n'
    )
    started = tmp_path / "started"
    monkeypatch.setenv("CORRAL_TEST_STARTED", str(started))
    monkeypatch.setenv("UV_NO_CACHE", "1")
    builder = VenvBuilder(tmp_path / "venvs")
    spec = make_spec(tmp_path, f"{project}\n")
    task = asyncio.create_task(builder.ensure(spec, lambda _: None))

    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the build backend never started"
        assert not task.done(), task
        await asyncio.sleep(0.02)
    assert (builder.path_for(spec) / "bin").is_dir()  # mid-build: the venv half exists
    await builder.aclose()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert not builder.path_for(spec).exists()
    backend_pid = int(started.read_text())
    deadline = time.monotonic() + 10
    while _alive(backend_pid):
        assert time.monotonic() < deadline, "build backend survived the cancel"
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_fallback_venv_and_pip(tmp_path: Path, wheel: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs", use_uv=False)
    spec = make_spec(tmp_path, f"{wheel}\n")
    lines: list[str] = []

    venv = await builder.ensure(spec, lines.append)

    assert any(line.startswith("$ ") and "-m venv" in line for line in lines)
    assert any("Successfully installed corral-tiny" in line for line in lines), lines
    assert run(venv, "corral-tiny").strip() == "corral_tiny 0.1 ok"
    assert "pip" in run(venv, "pip", "--version")  # pip's own console script, too


def test_key_follows_included_files_and_interpreter(tmp_path: Path) -> None:
    builder = VenvBuilder(tmp_path / "venvs")
    spec = make_spec(tmp_path, "-r base.txt\n")
    base = spec.cwd / "base.txt"
    base.write_text("six\n")
    first = builder.key(spec)
    assert builder.key(spec) == first
    base.write_text("six==1.17.0\n")
    assert builder.key(spec) != first  # an edit in an included file counts

    missing = ServiceSpec(name="x", command=("true",), cwd=spec.cwd, python="python-corral-nope")
    with pytest.raises(VenvError, match="not found"):
        builder.key(missing)


def test_pip_config_is_mirrored_for_uv(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://mirror.example/simple\n"
        "extra-index-url = https://a.example/simple\n  https://b.example/simple\n"
        "find-links = /w1 /w2\ntrusted-host = mirror.example\n"
        "[install]\nno-index = true\n"
    )
    environ = {
        "HOME": str(tmp_path),
        "XDG_CONFIG_DIRS": str(tmp_path / "none"),
        "PIP_CONFIG_FILE": str(conf),
        "PIP_CERT": "/certs/ca.pem",
    }
    assert pip_settings(environ)["cert"] == "/certs/ca.pem"
    env, flags = uv_config_from_pip(environ)
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["UV_EXTRA_INDEX_URL"] == "https://a.example/simple https://b.example/simple"
    assert env["UV_FIND_LINKS"] == "/w1,/w2"
    assert env["UV_INSECURE_HOST"] == "mirror.example"
    assert env["SSL_CERT_FILE"] == "/certs/ca.pem"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"
    assert flags == ["--no-index"]

    # The user configured uv itself: pip's settings must not override it.
    assert uv_config_from_pip({**environ, "UV_INDEX_URL": "https://uv.example"}) == ({}, [])
    devnull = {**environ, "PIP_CONFIG_FILE": os.devnull}
    assert "index-url" not in pip_settings(devnull)
