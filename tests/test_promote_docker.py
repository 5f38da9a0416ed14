"""The promoted example stack on a real Docker engine: images built unmodified, compose up
with healthy replicas in dependency order, a Swarm stack deployed, updated start-first under
load with no failed request, and removed.

Group `docker`: without an engine these skip ("Docker engine not running"); with
CORRAL_REQUIRE=docker (CI) they fail instead. `.ci/setup-docker` starts the engine, makes the
base image, links Compose v2 and initialises Swarm. Everything made here is removed at the end
(containers, stacks, images, build cache), except the base image.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.ports import free_port

from .promote_support import APPS, copy_shop

# Image builds from nothing (a clean CI machine) take minutes, not the suite's 60 s per test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

# One per test run: two suites on one engine (developers side by side) must not share stacks,
# networks or images.
PROJECT = f"shoptest{os.getpid()}"
BASE_IMAGE = "python:3.11-slim"
CORRAL = [sys.executable, "-m", "supervisor"]


def _missing(reason: str) -> None:
    if "docker" in os.environ.get("CORRAL_REQUIRE", "").split(","):
        pytest.fail(f"CORRAL_REQUIRE=docker, but: {reason}")
    pytest.skip(reason)


def _docker_cli() -> str | None:
    # Debian's CLI first: another `docker` earlier on PATH may lack BuildKit's classic path.
    for candidate in (os.environ.get("DOCKER"), "/usr/bin/docker", "docker"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    """The docker CLI, with an engine behind it and the base image; cleans up afterwards."""
    cli = _docker_cli()
    if cli is None or subprocess.run([cli, "info"], capture_output=True).returncode != 0:
        _missing("Docker engine not running")
    assert cli is not None
    if subprocess.run([cli, "image", "inspect", BASE_IMAGE], capture_output=True).returncode:
        _missing(f"base image {BASE_IMAGE} not present (.ci/setup-docker makes it)")
    try:
        yield cli
    finally:
        # By ID: an image rebuilt under the same tag leaves its predecessor untagged.
        _note_images(cli)
        if BUILT:
            subprocess.run([cli, "image", "rm", "-f", *sorted(BUILT)], capture_output=True)
        subprocess.run([cli, "builder", "prune", "-af"], capture_output=True)


BUILT: set[str] = set()  # IDs of every image the tests built


def _note_images(docker: str) -> None:
    out = subprocess.run(
        [docker, "images", "-q", "--no-trunc", f"{PROJECT}-*"], capture_output=True, text=True
    ).stdout
    BUILT.update(out.split())


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The example stack under a test project name, its proxy on a free port: (config, port)."""
    port = free_port()
    path = copy_shop(tmp_path_factory.mktemp("docker"), listen=f"127.0.0.1:{port}", project=PROJECT)
    return path, port


def _index_build_args() -> str:
    """This machine's pip index settings as build args, so builds reach the index as pip here
    does (the artifacts stay registry-neutral: they only declare the args). Local `file://`
    indexes are not reachable inside a build and are left out; the CA bundle pip names is in
    the base image .ci/setup-docker makes."""
    from supervisor.pipconfig import pip_settings

    pip = pip_settings(os.environ)
    args = []
    for option, name in (
        ("index-url", "PIP_INDEX_URL"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
    ):
        urls = [u for u in pip.get(option, "").split() if u.startswith(("http://", "https://"))]
        if urls:  # DOCKER_BUILD_ARGS splits on spaces: one URL per setting
            args.append(f"{name}={urls[0]}")
    return " ".join(args)


def _promote(
    docker: str, config: Path, target: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    # This engine has no default bridge network: builds use the host's (DOCKER_BUILD_NETWORK).
    env = {
        **os.environ,
        "DOCKER": docker,
        "DOCKER_BUILD_NETWORK": "host",
        "DOCKER_BUILD_ARGS": _index_build_args(),
    }
    args = ["promote", target, "-f", str(config), "-o", str(config.parent / f"out-{target}")]
    result = subprocess.run(
        [*CORRAL, *args, *extra], capture_output=True, text=True, env=env, timeout=900
    )
    _note_images(docker)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    return result


def _run(docker: str, *args: str) -> str:
    result = subprocess.run([docker, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def _run_detached(docker: str, name: str, port: int, image: str) -> None:
    """docker run -d on the host network with PORT overridden (a test may leave it Created)."""
    _run(docker, "run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}", image)


def _poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)


def _get(port: int, path: str = "/") -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, json.loads(body) if response.status == 200 else {}


def _responders(port: int, key: str, expected: set[str] | int, timeout: float = 30) -> set[str]:
    """The `key` values of the replicas answering through the entry proxy, once `expected`
    (a set, or a count) have answered or `timeout` passed; every answer must be a 200."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _get(port)
        assert status == 200 and body["service"] == "shop-api", (status, body)
        seen.add(str(body[key]))
        if seen == expected or (isinstance(expected, int) and len(seen) >= expected):
            break
    return seen


def _answers(port: int) -> bool:
    try:
        return _get(port)[0] == 200
    except OSError:
        return False


def test_images_build_unmodified_and_the_api_container_turns_healthy(
    docker: str, shop: tuple[Path, int]
) -> None:
    config, _ = shop
    result = _promote(docker, config, "docker", "--build")
    assert f"-t {PROJECT}-api:latest" in result.stdout

    assert _run(docker, "image", "inspect", "-f", "{{.Config.User}}", f"{PROJECT}-api").strip() == (
        "10001:10001"
    )
    port = free_port()
    name = f"{PROJECT}-api-probe"
    # PORT is the image's default (8001); the HEALTHCHECK reads $PORT, so overriding it works.
    try:
        _run_detached(docker, name, port, f"{PROJECT}-api")
        _poll(
            lambda: (
                _run(docker, "inspect", "-f", "{{.State.Health.Status}}", name).strip() == "healthy"
            ),
            90,
            "the api container's HEALTHCHECK to pass",
        )
        status, body = _get(port)
        assert status == 200 and body["service"] == "shop-api" and body["port"] == port
        assert _run(docker, "exec", name, "id", "-u").strip() == "10001"
        # Exec-form CMD: SIGTERM reaches the app itself, which exits cleanly.
        _run(docker, "stop", "--time", "20", name)
        assert _run(docker, "inspect", "-f", "{{.State.ExitCode}}", name).strip() == "0"
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def test_a_uv_locked_service_builds_and_a_handlerless_app_stops_on_sigterm(
    docker: str, tmp_path: Path
) -> None:
    root = tmp_path / "uvp"
    shutil.copytree(APPS / "uvproj", root / "svc")
    config = root / "corral.toml"
    config.write_text(
        f'project = "{PROJECT}"\n[services.locked]\ncommand = "python app.py"\ncwd = "svc"\n'
        'port = 7200\nrequirements = "pyproject.toml"\nhealth = { http = "/", interval = "1s" }\n'
    )
    _promote(docker, config, "docker", "--build")
    assert (
        "uv sync --frozen" in (root / "out-docker" / "docker" / "locked" / "Dockerfile").read_text()
    )
    port = free_port()
    name = f"{PROJECT}-locked-probe"
    try:
        _run_detached(docker, name, port, f"{PROJECT}-locked")
        _poll(lambda: _text(port) == "six 1.17.0", 60, "the uv-locked dependency to answer")
        # No SIGTERM handler: as PID 1 the app would ignore SIGTERM until SIGKILL (137); under
        # dumb-init the default action ends it (143), as it would under Corral.
        _run(docker, "stop", "--time", "30", name)
        assert _run(docker, "inspect", "-f", "{{.State.ExitCode}}", name).strip() == "143"
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def _text(port: int) -> str:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            return conn.getresponse().read().decode()
        finally:
            conn.close()
    except OSError:
        return ""


def test_compose_up_waits_for_healthy_replicas_in_dependency_order(
    docker: str, shop: tuple[Path, int]
) -> None:
    config, port = shop
    compose = [docker, "compose", "-f", str(config.parent / "out-compose" / "compose.yaml")]
    try:
        result = _promote(docker, config, "compose", "--deploy")
        assert "up -d --wait" in result.stdout

        rows = [
            json.loads(line)
            for line in subprocess.run(
                [*compose, "ps", "-a", "--format", "json"], capture_output=True, text=True
            ).stdout.splitlines()
            if line.strip()
        ]
        by_service: dict[str, list[dict[str, object]]] = {}
        for row in rows:
            by_service.setdefault(str(row["Service"]), []).append(row)
        assert len(by_service["api"]) == 3
        assert all(row["Health"] == "healthy" for row in by_service["api"])
        assert by_service["corral-proxy"][0]["Health"] == "healthy"
        assert by_service["migrate"][0]["State"] == "exited"
        assert by_service["migrate"][0]["ExitCode"] == 0

        def times(name: object, field: str) -> str:
            return _run(docker, "inspect", "-f", f"{{{{.State.{field}}}}}", str(name)).strip()

        finished = times(by_service["migrate"][0]["Name"], "FinishedAt")
        for row in by_service["api"]:
            assert times(row["Name"], "StartedAt") > finished, "api started before migrate ended"

        hosts = _responders(port, "host", 3)
        assert len(hosts) == 3, f"requests through the entry proxy reached {hosts}"
    finally:
        subprocess.run(
            [*compose, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
            capture_output=True,
        )


class Load:
    """GET / on the entry proxy from a few keep-alive clients until stopped; counts failures."""

    def __init__(self, port: int, clients: int = 4, limit: float = 180.0) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit  # bounded even if the test dies
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failed.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _swarm_api(docker: str) -> list[dict[str, str]]:
    """The api service's tasks that should be running, with their state and env."""
    out = _run(
        docker,
        "service",
        "ps",
        f"{PROJECT}_api",
        "--filter",
        "desired-state=running",
        "--format",
        "{{json .}}",
    )
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _healthy_api_containers(docker: str) -> list[str]:
    out = _run(
        docker,
        "ps",
        "--filter",
        f"label=com.docker.swarm.service.name={PROJECT}_api",
        "--format",
        "{{.Status}}",
    )
    return [line for line in out.splitlines() if "(healthy)" in line]


def test_swarm_stack_deploys_updates_start_first_without_a_failed_request_and_is_removed(
    docker: str, shop: tuple[Path, int]
) -> None:
    if _run(docker, "info", "--format", "{{.Swarm.LocalNodeState}}").strip() != "active":
        _missing("this engine is not in a swarm (docker swarm init)")
    config, port = shop
    try:
        # No routing mesh on this machine (no IPVS): the entry proxy publishes in host mode.
        _promote(docker, config, "swarm", "--publish-mode", "host", "--deploy")
        _poll(
            lambda: [t["CurrentState"].split()[0] for t in _swarm_api(docker)] == ["Running"] * 3,
            120,
            "3 api replicas Running",
        )
        _poll(lambda: len(_healthy_api_containers(docker)) == 3, 60, "3 healthy api replicas")
        _poll(lambda: _answers(port), 60, "the entry proxy to answer")
        # CORRAL_INSTANCE is the task's slot. The entry proxy finds a replica on its next DNS
        # lookup after Swarm lists it (every second), so the last one may take a moment.
        seen = _responders(port, "instance", {"api.1", "api.2", "api.3"})
        assert seen == {"api.1", "api.2", "api.3"}

        text = config.read_text()
        config.write_text(
            text.replace(
                'env = { SHOP_DB = "${SHOP_DB:-shop.db}" }\nhealth',
                'env = { SHOP_DB = "${SHOP_DB:-shop.db}", SHOP_RELEASE = "2" }\nhealth',
            )
        )
        assert config.read_text() != text
        with Load(port) as load:
            _poll(lambda: load.ok > 50, 30, "load to run")
            _promote(docker, config, "swarm", "--publish-mode", "host", "--deploy")
            _poll(lambda: _update_state(docker) == "completed", 180, "the rolling update")
            served_before = load.ok
            _poll(lambda: load.ok > served_before + 50, 30, "requests after the update")
        assert load.failed == [], f"{len(load.failed)} failed of {load.ok + len(load.failed)}"
        env = _run(
            docker,
            "service",
            "inspect",
            "-f",
            "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
            f"{PROJECT}_api",
        )
        assert "SHOP_RELEASE=2" in env
        assert len(_swarm_api(docker)) == 3
    finally:
        subprocess.run([docker, "stack", "rm", PROJECT], capture_output=True)
        _poll(lambda: not _stack_leftovers(docker), 120, "the stack's containers and network to go")


def _update_state(docker: str) -> str:
    out = _run(docker, "service", "inspect", "-f", "{{json .UpdateStatus}}", f"{PROJECT}_api")
    status = json.loads(out) if out.strip() not in ("", "null") else None
    return str(status.get("State")) if status else ""


def _stack_leftovers(docker: str) -> list[str]:
    label = f"label=com.docker.stack.namespace={PROJECT}"
    containers = _run(docker, "ps", "-aq", "--filter", label).split()
    networks = _run(docker, "network", "ls", "-q", "--filter", label).split()
    return containers + networks
