"""Every way corral.toml can be wrong: which file, which key, what was expected, what was got."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from config import ConfigError, load


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load(path, environ=environ or {})
    assert info.value.file == path
    return info.value


def test_str_names_file_key_and_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("corral.toml").write_text('[services.api]\ncommand = "api"\ninstances = "three"\n')

    with pytest.raises(ConfigError) as info:
        load("corral.toml", environ={})

    assert str(info.value) == (
        'corral.toml: services.api.instances: expected an integer from 0 to 1000, got "three"'
    )


def test_str_omits_empty_parts_and_pickles() -> None:
    error = ConfigError(None, "", "no corral.toml in /x (use -f FILE)")

    assert str(error) == "no corral.toml in /x (use -f FILE)"
    copy = pickle.loads(pickle.dumps(ConfigError(Path("c.toml"), "a.b", "bad")))
    assert (copy.file, copy.key, copy.message, str(copy)) == (
        Path("c.toml"),
        "a.b",
        "bad",
        "c.toml: a.b: bad",
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    with pytest.raises(ConfigError) as info:
        load(path, environ={})

    assert (info.value.file, info.value.key, info.value.message) == (path, "", "file not found")


def test_toml_syntax_error_keeps_line_and_column(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "api"\ninstances 3\n')

    assert error.key == ""
    assert "(at line 3, column 11)" in error.message


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            '[services.api]\ncommand = "a"\nport = 1\nhealth = { http = "/", intreval = "1s" }',
            "services.api.health",
            "unknown key 'intreval' (did you mean 'interval'?)",
        ),
        (
            '[services.api]\ncommand = "a"\ninstance = 2',
            "services.api",
            "(did you mean 'instances'?)",
        ),
        ('servces = 1\n[services.api]\ncommand = "a"', "", "unknown key 'servces' (did you mean"),
        (
            '[proxy]\nlisten = ":1"\nworkres = 2\n[services.api]\ncommand = "a"',
            "proxy",
            "'workers'",
        ),
        ('[daemon]\nzzz = 1\n[services.api]\ncommand = "a"', "daemon", "unknown key 'zzz'"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = _error(tmp_path, text)

    assert error.key == key
    assert message in error.message


def test_unknown_key_without_close_match_has_no_hint(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\nzzzzzz = 1\n')

    assert error.message == "unknown key 'zzzzzz'"


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('instances = "three"', "instances", 'expected an integer from 0 to 1000, got "three"'),
        ("instances = true", "instances", "expected an integer from 0 to 1000, got true"),
        ("instances = -1", "instances", "expected an integer from 0 to 1000, got -1"),
        ("command = 5", "command", "expected a command string or an array of strings, got 5"),
        ('command = ""', "command", 'expected a non-empty command, got ""'),
        ('command = "a \'b"', "command", "cannot split"),
        ("venv = 1", "venv", "expected true or false, got 1"),
        ('restart = "sometimes"', "restart", 'expected "always" or "on-failure" or "no"'),
        ('stop_signal = "SIGNOPE"', "stop_signal", 'expected a signal like "SIGTERM"'),
        (
            'stop_timeout = "soon"',
            "stop_timeout",
            'expected a duration like "2s" (at most 24h), got "soon"',
        ),
        ("env = { A = [1] }", "env.A", "expected a string or number, got [1]"),
        ('balance = "fastest"', "balance", '"round_robin" or "least_conn"'),
        ("max_surge = 0", "max_surge", "expected an integer >= 1, got 0"),
        ("watch = [1]", "watch", "expected an array of strings, got [1]"),
        ('depends_on = "db"', "depends_on", "expected an array of service names or a table"),
        ("route = 1", "route", "expected a table, got 1"),
        (
            'backoff = { initial = "2s", max = "1s" }',
            "backoff.max",
            "expected a duration >= initial (2s)",
        ),
        ('port = "eighty"', "port", 'expected a port from 1 to 65535 or "auto", got "eighty"'),
    ],
)
def test_wrong_types_in_a_service(tmp_path: Path, line: str, key: str, message: str) -> None:
    text = f'[services.api]\ncommand = "api"\n{line}\n'
    # A later `command = ...` line replaces the first one.
    if line.startswith("command"):
        text = f"[services.api]\n{line}\n"

    error = _error(tmp_path, text)

    assert error.key == f"services.api.{key}"
    assert message in error.message


def test_health_interval_not_a_duration(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        '[services.api]\ncommand = "a"\nport = 1\nhealth = { http = "/", interval = "fast" }\n',
    )

    assert error.key == "services.api.health.interval"
    assert error.message == 'expected a duration like "2s" (more than 0, at most 24h), got "fast"'


@pytest.mark.parametrize("port", ["0", "70000"])
def test_port_out_of_range(tmp_path: Path, port: str) -> None:
    error = _error(tmp_path, f'[services.api]\ncommand = "a"\nport = {port}\n')

    assert error.key == "services.api.port"
    assert error.message == f'expected a port from 1 to 65535 or "auto", got {port}'


def test_port_range_past_65535(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\nport = 65534\ninstances = 3\n')

    assert error.key == "services.api.port"
    assert error.message == "3 instances from port 65534 would need up to 65536"


def test_overlapping_port_ranges(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        """
        [services.api]
        command = "a"
        port = 8001
        instances = 3
        [services.web]
        command = "w"
        port = 8003
        """,
    )

    assert error.key == "services.web.port"
    assert error.message == 'port 8003 is also used by service "api" (ports 8001-8003)'


def test_proxy_listen_inside_a_service_range(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        """
        [proxy]
        listen = "0.0.0.0:8002"
        [services.api]
        command = "a"
        port = 8001
        instances = 2
        """,
    )

    assert error.key == "proxy.listen"
    assert error.message == 'port 8002 is also used by service "api" (ports 8001-8002)'


@pytest.mark.parametrize("listen", ['"host:"', '"::1:80"', '"[::1]80"', "70000", "true", '"[x]:1"'])
def test_bad_listen_address(tmp_path: Path, listen: str) -> None:
    error = _error(tmp_path, f'[proxy]\nlisten = {listen}\n[services.a]\ncommand = "a"\n')

    assert error.key == "proxy.listen"
    assert error.message.startswith('expected an address like "127.0.0.1:8080"')


def test_bad_trusted_proxy(tmp_path: Path) -> None:
    error = _error(tmp_path, '[proxy]\ntrusted_proxies = ["lan"]\n[services.a]\ncommand = "a"\n')

    assert error.key == "proxy.trusted_proxies"
    assert error.message == 'expected an IP address or network like "10.0.0.0/8", got "lan"'


def test_depends_on_unknown_service(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        '[services.api]\ncommand = "a"\ndepends_on = ["dbb"]\n[services.db]\ncommand = "d"\n',
    )

    assert error.key == "services.api.depends_on"
    assert error.message == 'unknown service "dbb" (did you mean "db"?)'


def test_depends_on_itself(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\ndepends_on = ["api"]\n')

    assert error.key == "services.api.depends_on"
    assert error.message == 'service "api" cannot depend on itself'


def test_dependency_cycle(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        """
        [services.a]
        command = "a"
        depends_on = ["b"]
        [services.b]
        command = "b"
        depends_on = { c = "started" }
        [services.c]
        command = "c"
        depends_on = ["a"]
        """,
    )

    assert error.key == "services.a.depends_on"
    assert error.message == "dependency cycle: a -> b -> c -> a"


def test_completed_needs_a_oneshot(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        """
        [services.api]
        command = "a"
        depends_on = { db = "completed" }
        [services.db]
        command = "d"
        """,
    )

    assert error.key == "services.api.depends_on.db"
    assert error.message == '"completed" needs service "db" to be oneshot = true'


def test_healthy_needs_a_check_or_a_port(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        """
        [services.api]
        command = "a"
        depends_on = { jobs = "healthy" }
        [services.jobs]
        command = "j"
        """,
    )

    assert error.key == "services.api.depends_on.jobs"
    assert 'needs service "jobs" to have a health check or a port' in error.message


def test_bad_depends_on_condition(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        '[services.api]\ncommand = "a"\ndepends_on = { db = "ready" }\n'
        '[services.db]\ncommand = "d"\n',
    )

    assert error.key == "services.api.depends_on.db"
    assert error.message == 'expected "started" or "healthy" or "completed", got "ready"'


def test_oneshot_cannot_restart_always(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.m]\ncommand = "m"\noneshot = true\nrestart = "always"\n')

    assert error.key == "services.m.restart"
    assert 'expected "no" or "on-failure" for a oneshot service, got "always"' == error.message


def test_missing_requirements_file(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\nrequirements = "reqs.txt"\n')

    assert error.key == "services.api.requirements"
    assert error.message == f"file {tmp_path.resolve() / 'reqs.txt'} does not exist"


def test_requirements_without_venv(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("")
    error = _error(
        tmp_path, '[services.api]\ncommand = "a"\nvenv = false\nrequirements = "requirements.txt"\n'
    )

    assert error.key == "services.api.requirements"
    assert "venv = false" in error.message


def test_python_without_venv(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\nvenv = false\npython = "python3"\n')

    assert error.key == "services.api.python"


def test_missing_cwd(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\ncwd = "api"\n')

    assert error.key == "services.api.cwd"
    assert error.message == f"directory {tmp_path.resolve() / 'api'} does not exist"


def test_cwd_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "api").write_text("")
    error = _error(tmp_path, '[services.api]\ncommand = "a"\ncwd = "api"\n')

    assert error.key == "services.api.cwd"
    assert error.message.endswith("is not a directory")


def test_missing_env_file(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\nenv_file = ".env"\n')

    assert error.key == "services.api.env_file"
    assert "does not exist" in error.message


@pytest.mark.parametrize("check", ['http = "/healthz"', "tcp = true"])
def test_port_check_on_a_service_without_port(tmp_path: Path, check: str) -> None:
    error = _error(tmp_path, f'[services.api]\ncommand = "a"\nhealth = {{ {check} }}\n')

    kind = check.split(" ")[0]
    assert error.key == f"services.api.health.{kind}"
    assert error.message == f"a {kind} check needs the service to have a port"


@pytest.mark.parametrize(
    ("health", "got"),
    [('{ interval = "1s" }', "none"), ('{ http = "/", tcp = true }', "http and tcp")],
)
def test_health_needs_exactly_one_probe(tmp_path: Path, health: str, got: str) -> None:
    error = _error(tmp_path, f'[services.api]\ncommand = "a"\nport = 1\nhealth = {health}\n')

    assert error.key == "services.api.health"
    assert error.message == f"expected exactly one of http, tcp or exec, got {got}"


def test_health_timeout_longer_than_interval(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        '[services.api]\ncommand = "a"\n'
        'health = { exec = "true", interval = "1s", timeout = "3s" }\n',
    )

    assert error.key == "services.api.health.timeout"
    assert error.message == 'expected a duration <= interval (1s), got "3s"'


def test_port_placeholder_without_port(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "app --port {port}"\n')

    assert error.key == "services.api.command"
    assert error.message == "uses {port} but the service has no port"


def test_route_without_port(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "a"\nroute = { path = "/api" }\n')

    assert error.key == "services.api.route"
    assert error.message == "a routed service needs a port"


def test_duplicate_routes(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        """
        [services.a]
        command = "a"
        port = 8001
        route = { host = "x.localhost", path = "/api" }
        [services.b]
        command = "b"
        port = 8002
        route = { host = "X.localhost", path = "/api/" }
        """,
    )

    assert error.key == "services.b.route"
    assert error.message == 'host "x.localhost" path "/api" is also routed to service "a"'


def test_hash_on_needs_hash_balance(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.a]\ncommand = "a"\nhash_on = "ip"\n')

    assert error.key == "services.a.hash_on"


def test_bad_hash_on(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.a]\ncommand = "a"\nbalance = "hash"\nhash_on = "header:"\n')

    assert error.key == "services.a.hash_on"
    assert error.message == 'expected "ip", "header:NAME" or "cookie:NAME", got "header:"'


def test_more_weights_than_instances(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.a]\ncommand = "a"\ninstances = 2\nweight = [1, 2, 3]\n')

    assert error.key == "services.a.weight"
    assert error.message == "expected at most 2 weights (one per instance), got 3"


@pytest.mark.parametrize("text", ["", 'project = "x"\n', "[services]\n"])
def test_no_services(tmp_path: Path, text: str) -> None:
    error = _error(tmp_path, text)

    assert error.key == "services"
    assert error.message == "expected at least one [services.NAME] table, got none"


def test_bad_service_name(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.Api]\ncommand = "a"\n')

    assert error.key == "services"
    assert 'got "Api"' in error.message


def test_missing_command(tmp_path: Path) -> None:
    error = _error(tmp_path, "[services.api]\ninstances = 2\n")

    assert error.key == "services.api.command"
    assert error.message.startswith("missing")


def test_required_variable(tmp_path: Path) -> None:
    error = _error(
        tmp_path, '[services.api]\ncommand = "a"\nenv = { DB = "${DB_URL:?set DB_URL}" }\n'
    )

    assert error.key == "services.api.env.DB"
    assert error.message == "${DB_URL} is required: set DB_URL"


def test_bad_interpolation_syntax(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = ["a", "${1X}"]\n')

    assert error.key == "services.api.command[1]"
    assert 'write "$$" for a literal "$"' in error.message


def test_socket_path_too_long(tmp_path: Path) -> None:
    error = _error(
        tmp_path, f'[daemon]\nsocket = "{"s" * 120}.sock"\n[services.a]\ncommand = "a"\n'
    )

    assert error.key == "daemon.socket"
    assert "at most 100 bytes" in error.message


def test_weight_zero_is_rejected(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.a]\ncommand = "a"\nport = 9000\nweight = 0\n')
    assert error.key == "services.a.weight"
    assert "expected an integer >= 1 or an array of them" in error.message


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('min_uptime = "a while"', "min_uptime", 'expected a duration like "2s"'),
        ("min_uptime = -1", "min_uptime", "got -1"),
        ("start_timeout = 0", "start_timeout", "(more than 0, at most 24h), got 0"),
        ('start_timeout = "forever"', "start_timeout", 'got "forever"'),
    ],
)
def test_wrong_start_up_settings(tmp_path: Path, line: str, key: str, message: str) -> None:
    error = _error(tmp_path, f'[services.api]\ncommand = "api"\n{line}\n')

    assert error.key == f"services.api.{key}"
    assert message in error.message


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('crash_loop = "forever"', "crash_loop", 'expected "retry" or "stop", got "forever"'),
        ("crash_loop = true", "crash_loop", 'expected "retry" or "stop", got true'),
        ('crash_cooldown = "10s"', "crash_cooldown", 'expected a table, got "10s"'),
        ('crash_cooldown = { initial = "0s" }', "crash_cooldown.initial", "more than 0"),
        (
            'crash_cooldown = { initial = "1m", max = "10s" }',
            "crash_cooldown.max",
            'expected a duration >= initial (1m), got "10s"',
        ),
        ('crash_cooldown = { min = "1s" }', "crash_cooldown", "unknown key 'min'"),
    ],
)
def test_wrong_crash_loop_settings(tmp_path: Path, line: str, key: str, message: str) -> None:
    error = _error(tmp_path, f'[services.api]\ncommand = "api"\n{line}\n')

    assert error.key == f"services.api.{key}"
    assert message in error.message


def test_roll_must_be_a_known_strategy(tmp_path: Path) -> None:
    error = _error(tmp_path, '[services.api]\ncommand = "api"\nroll = "blue-green"\n')

    assert error.key == "services.api.roll"
    assert error.message == 'expected "auto" or "surge" or "in-place", got "blue-green"'
