"""config.load on valid files: every key, the defaults, interpolation, ordering."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from config import ConfigError, find_config, load
from config.model import (
    Balance,
    DependCondition,
    HashKey,
    HealthKind,
    HealthSpec,
    RestartPolicy,
    RouteSpec,
)

FULL = """
project = "shop"

[daemon]
state_dir = "state"
socket = "run/corral.sock"
log_max_size = "1MB"
log_keep = 3
log_tail_lines = 200

[proxy]
listen = ["127.0.0.1:9000", ":9001", "9002", "[::1]:9003", 9004]
timeouts = { connect = "1s", read = "30s", idle = "2s" }
retries = 1
retry_on_error = false
max_body_size = "100MB"
max_header_size = "32KB"
queue_timeout = "5s"
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]
eject = { failures = 3, cooldown = "20s" }
access_log = true
workers = 2

[services.api]  # listed first, started third
command = "python app.py --port {port}"
instances = 3
port = 8001
cwd = "api"
requirements = "pyproject.toml"
venv = true
python = "python3.11"
env = { DEBUG = true, WORKERS = 4, RATIO = 0.5, NAME = "api" }
env_file = ".env"
restart = "on-failure"
stop_signal = 2
stop_timeout = "15s"
depends_on = { db = "healthy", migrate = "completed" }
oneshot = false
crash_limit = 10
crash_window = "2m"
backoff = { initial = "200ms", max = "1m" }
route = { path = "/api", host = "API.localhost", strip_prefix = true }
balance = "hash"
hash_on = "cookie:sid"
weight = [3, 1, 1]
drain_timeout = "45s"
max_surge = 2
watch = ["**/*.py"]
watch_ignore = ["tests/**"]

[services.api.health]
http = "/ready"
interval = "5s"
timeout = "2s"
retries = 5
start_period = "10s"
restart_unhealthy = false

[services.db]
command = ["db-server", "--port", "{port}"]
port = 5432
venv = false
health = { tcp = true }
stop_signal = "INT"

[services.migrate]
command = "python migrate.py"
oneshot = true
restart = "on-failure"
depends_on = ["db"]
venv = false

[services.worker]
command = "python worker.py"
port = "auto"
instances = 2
health = { exec = "python check.py --quick" }
balance = "least_conn"
weight = 2
"""


def _write(directory: Path, text: str) -> Path:
    path = directory / "corral.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _full(tmp_path: Path) -> Path:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "pyproject.toml").write_text("[project]\nname = 'api'\n")
    (tmp_path / "api" / ".env").write_text("NAME=from-file\nSECRET=s3cret\n")
    return _write(tmp_path, FULL)


def test_full_example_reads_every_key(tmp_path: Path) -> None:
    plan = load(_full(tmp_path), environ={})

    assert plan.path == tmp_path.resolve() / "corral.toml"
    assert plan.project == "shop"
    root = tmp_path.resolve()
    assert plan.daemon.state_dir == root / "state"
    assert plan.daemon.socket == root / "run" / "corral.sock"
    assert (plan.daemon.log_max_bytes, plan.daemon.log_keep, plan.daemon.log_tail_lines) == (
        1024 * 1024,
        3,
        200,
    )

    proxy = plan.proxy
    assert proxy is not None
    assert proxy.listen == (
        ("127.0.0.1", 9000),
        ("127.0.0.1", 9001),
        ("127.0.0.1", 9002),
        ("::1", 9003),
        ("127.0.0.1", 9004),
    )
    assert (proxy.connect_timeout, proxy.read_timeout, proxy.idle_timeout) == (1.0, 30.0, 2.0)
    assert (proxy.retries, proxy.retry_idempotent_errors) == (1, False)
    assert (proxy.max_body_size, proxy.max_header_size) == (100 * 1024**2, 32 * 1024)
    assert proxy.queue_timeout == 5.0
    assert proxy.trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert (proxy.eject_failures, proxy.eject_cooldown) == (3, 20.0)
    assert (proxy.access_log, proxy.workers) == (True, 2)

    api = plan.services["api"]
    assert api.command == ("python", "app.py", "--port", "{port}")
    assert (api.instances, api.port, api.auto_port) == (3, 8001, False)
    assert api.cwd == root / "api"
    assert api.requirements == root / "api" / "pyproject.toml"
    assert (api.venv, api.python) == (True, "python3.11")
    # The env table wins over env_file; non-string values become strings.
    assert api.env == {
        "NAME": "api",
        "SECRET": "s3cret",
        "DEBUG": "true",
        "WORKERS": "4",
        "RATIO": "0.5",
    }
    assert api.restart is RestartPolicy.ON_FAILURE
    assert api.stop_signal is signal.SIGINT
    assert api.stop_timeout == 15.0
    assert api.depends_on == {"db": DependCondition.HEALTHY, "migrate": DependCondition.COMPLETED}
    assert api.oneshot is False
    assert api.health == HealthSpec(
        kind=HealthKind.HTTP,
        path="/ready",
        interval=5.0,
        timeout=2.0,
        retries=5,
        start_period=10.0,
        restart_unhealthy=False,
    )
    assert (api.crash_limit, api.crash_window) == (10, 120.0)
    assert (api.backoff_initial, api.backoff_max) == (0.2, 60.0)
    assert api.route == RouteSpec(path="/api", host="api.localhost", strip_prefix=True)
    assert api.balance is Balance.HASH
    assert api.hash_key == HashKey(source="cookie", name="sid")
    assert api.weights == (3, 1, 1)
    assert (api.drain_timeout, api.max_surge) == (45.0, 2)
    assert (api.watch, api.watch_ignore) == (("**/*.py",), ("tests/**",))

    db = plan.services["db"]
    assert db.command == ("db-server", "--port", "{port}")
    assert db.stop_signal is signal.SIGINT
    assert db.health is not None and db.health.kind is HealthKind.TCP
    assert (db.venv, db.requirements, db.route) == (False, None, None)

    migrate = plan.services["migrate"]
    assert migrate.oneshot and migrate.restart is RestartPolicy.ON_FAILURE
    assert migrate.depends_on == {"db": DependCondition.STARTED}

    worker = plan.services["worker"]
    assert (worker.port, worker.auto_port, worker.has_port) == (None, True, True)
    assert worker.health is not None
    assert worker.health.command == ("python", "check.py", "--quick")
    assert worker.balance is Balance.LEAST_CONN
    assert (worker.weights, worker.default_weight) == ((), 2)
    assert worker.weight(5) == 2  # instances added by `scale` weigh the same
    # A route exists elsewhere, so the auto-port worker is not proxied.
    assert worker.route is None


def test_services_are_ordered_dependencies_first(tmp_path: Path) -> None:
    plan = load(_full(tmp_path), environ={})

    assert list(plan.services) == ["db", "migrate", "api", "worker"]


def test_order_is_stable_by_file_order_otherwise(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [services.web]
        command = "web"
        depends_on = ["api"]
        [services.api]
        command = "api"
        depends_on = ["db"]
        [services.db]
        command = "db"
        [services.cache]
        command = "cache"
        """,
    )

    assert list(load(path, environ={}).services) == ["db", "api", "web", "cache"]


def test_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, '[services.app]\ncommand = "python app.py"\n')

    plan = load(path, environ={})

    root = tmp_path.resolve()
    assert plan.project == tmp_path.name
    assert plan.proxy is None
    assert plan.daemon.state_dir == root / ".corral"
    assert plan.daemon.socket == root / ".corral" / "corral.sock"
    assert (plan.daemon.log_max_bytes, plan.daemon.log_keep, plan.daemon.log_tail_lines) == (
        10 * 1024 * 1024,
        5,
        1000,
    )
    app = plan.services["app"]
    assert app.command == ("python", "app.py")
    assert (app.instances, app.port, app.auto_port, app.cwd) == (1, None, False, root)
    assert (app.venv, app.requirements, app.python) == (True, None, sys.executable)
    assert (app.env, app.depends_on, app.health, app.route) == ({}, {}, None, None)
    assert (app.restart, app.stop_signal, app.stop_timeout) == (
        RestartPolicy.ALWAYS,
        signal.SIGTERM,
        10.0,
    )
    assert (app.crash_limit, app.crash_window, app.backoff_initial, app.backoff_max) == (
        5,
        60.0,
        0.1,
        30.0,
    )
    assert (app.balance, app.hash_key, app.weights) == (Balance.ROUND_ROBIN, HashKey(), ())
    assert (app.drain_timeout, app.max_surge, app.watch, app.watch_ignore) == (30.0, 1, (), ())


def test_requirements_default_to_cwd_requirements_txt(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("aiohttp\n")
    path = _write(
        tmp_path,
        """
        [services.app]
        command = "python app.py"
        [services.tool]
        command = "tool"
        venv = false
        """,
    )

    plan = load(path, environ={})

    assert plan.services["app"].requirements == tmp_path.resolve() / "requirements.txt"
    assert plan.services["tool"].requirements is None


def test_proxy_defaults_and_the_default_route(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [proxy]
        [services.web]
        command = "web --port {port}"
        port = 8001
        [services.jobs]
        command = "jobs"
        """,
    )

    plan = load(path, environ={})

    assert plan.proxy is not None
    assert plan.proxy.listen == (("127.0.0.1", 8080),)
    assert plan.proxy.max_header_size == 64 * 1024
    # The only service with a port is routed at "/" without being told.
    assert plan.services["web"].route == RouteSpec(path="/")
    assert plan.services["jobs"].route is None


def test_no_default_route_with_two_ported_services(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [proxy]
        [services.a]
        command = "a"
        port = 8001
        [services.b]
        command = "b"
        port = "auto"
        """,
    )

    plan = load(path, environ={})

    assert [spec.route for spec in plan.services.values()] == [None, None]


def test_no_default_route_without_proxy(tmp_path: Path) -> None:
    path = _write(tmp_path, '[services.web]\ncommand = "web"\nport = 8001\n')

    assert load(path, environ={}).services["web"].route is None


def test_health_timeout_default_follows_a_short_interval(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [services.web]
        command = "web"
        port = 8001
        health = { http = true, interval = "250ms" }
        """,
    )

    health = load(path, environ={}).services["web"].health

    assert health is not None
    assert (health.path, health.interval, health.timeout) == ("/healthz", 0.25, 0.25)


def test_interpolation(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("URL=postgres://${DB_HOST}/shop\nLITERAL='a$b'\n")
    path = _write(
        tmp_path,
        """
        project = "${PROJECT:-fallback}"
        [services.api]
        command = ["serve", "--workers", "${WORKERS}", "--price", "$$5", "--home", "$HOME"]
        port = 8001
        env_file = ".env"
        env = { MODE = "${MODE:-dev}", EMPTY = "${UNSET}", TOKEN = "${TOKEN:?set TOKEN}" }
        """,
    )

    plan = load(path, environ={"WORKERS": "4", "TOKEN": "t", "DB_HOST": "pg"})

    api = plan.services["api"]
    assert plan.project == "fallback"
    # `$$` is a literal dollar; a bare `$HOME` is left for the shell.
    assert api.command == ("serve", "--workers", "4", "--price", "$5", "--home", "$HOME")
    assert api.env == {
        "URL": "postgres://pg/shop",
        "LITERAL": "a$b",
        "MODE": "dev",
        "EMPTY": "",
        "TOKEN": "t",
    }


def test_interpolation_happens_before_validation(tmp_path: Path) -> None:
    path = _write(tmp_path, '[services.api]\ncommand = "api"\nstop_timeout = "${GRACE}"\n')

    plan = load(path, environ={"GRACE": "3s"})

    assert plan.services["api"].stop_timeout == 3.0


def test_load_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TEST_CMD", "from-environ")
    path = _write(tmp_path, '[services.api]\ncommand = "${CORRAL_TEST_CMD}"\n')

    assert load(str(path)).services["api"].command == ("from-environ",)


def test_long_state_dir_moves_the_socket_to_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    path = _write(deep, '[services.app]\ncommand = "app"\n')

    socket = load(path, environ={}).daemon.socket

    assert socket.parent == Path(f"/tmp/corral-{os.getuid()}")
    assert len(socket.name) == len("0123456789ab.sock")
    assert load(path, environ={}).daemon.socket == socket  # stable per config file


def test_find_config_in_start_dir_and_parents(tmp_path: Path) -> None:
    path = _write(tmp_path, '[services.app]\ncommand = "app"\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)

    assert find_config(tmp_path) == path
    assert find_config(nested) == path


def test_find_config_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(tmp_path)

    assert (info.value.file, info.value.key) == (None, "")
    assert str(info.value) == f"no corral.toml in {tmp_path} (use -f FILE)"


def test_the_plan_is_immutable_all_the_way_down(tmp_path: Path) -> None:
    import dataclasses

    from config.model import ServiceSpec

    path = tmp_path / "corral.toml"
    path.write_text(
        '[services.a]\ncommand = "x"\nvenv = false\nenv = { K = "v" }\n'
        '[services.b]\ncommand = "y"\nvenv = false\ndepends_on = ["a"]\n'
    )
    plan = load(path, environ={})
    with pytest.raises(TypeError):
        plan.services["c"] = plan.services["a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.services["a"].env["K"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.services["b"].depends_on["x"] = DependCondition.STARTED  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.services["a"].instances = 3  # type: ignore[misc]
    # A dict handed to a constructor is copied, so the caller keeps no handle on the plan.
    env = {"K": "v"}
    spec = ServiceSpec(name="s", command=("x",), cwd=tmp_path, env=env)
    env["K"] = "changed"
    assert spec.env == {"K": "v"}
    # A change is a new plan; the old one is untouched.
    bigger = dataclasses.replace(
        plan, services={**plan.services, "a": dataclasses.replace(plan.services["a"], instances=2)}
    )
    assert bigger.services["a"].instances == 2 and plan.services["a"].instances == 1


def test_roll_auto_keeps_fixed_ports_unless_behind_the_proxy(tmp_path: Path) -> None:
    from config.model import Roll

    path = tmp_path / "corral.toml"
    path.write_text(
        '[services.fixed]\ncommand = "a"\nvenv = false\nport = 8001\n'
        '[services.auto]\ncommand = "b"\nvenv = false\nport = "auto"\n'
        '[services.none]\ncommand = "c"\nvenv = false\n'
        '[services.told]\ncommand = "d"\nvenv = false\nport = 9001\nroll = "surge"\n'
    )
    rolls = {n: s.roll for n, s in load(path, environ={}).services.items()}
    assert rolls == {
        "fixed": Roll.IN_PLACE,
        "auto": Roll.SURGE,
        "none": Roll.SURGE,
        "told": Roll.SURGE,
    }
    # Behind Corral's proxy a fixed port need not stay: replacements surge (no gap at all),
    # unless told otherwise.
    path.write_text(
        '[proxy]\nlisten = "127.0.0.1:0"\n'
        '[services.web]\ncommand = "a"\nvenv = false\nport = 8001\nroute = { path = "/" }\n'
        '[services.kept]\ncommand = "b"\nvenv = false\nport = 9001\nroll = "in-place"\n'
        'route = { path = "/k" }\n'
    )
    rolls = {n: s.roll for n, s in load(path, environ={}).services.items()}
    assert rolls == {"web": Roll.SURGE, "kept": Roll.IN_PLACE}
