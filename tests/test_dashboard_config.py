"""The `[dashboard]` table: where the web dashboard listens on TCP, and every way to get it wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config import ConfigError, load, plan_to_json, render
from config.model import Plan
from supervisor.reload import diff

SERVICE = '[services.api]\ncommand = "api"\nport = 8001\ninstances = 3\nvenv = false\n'


def _load(tmp_path: Path, text: str) -> Plan:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(text) + SERVICE)
    return load(path, environ={})


def _error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.file == tmp_path / "corral.toml"
    return info.value


def test_absent_means_socket_only(tmp_path: Path) -> None:
    plan = _load(tmp_path, "")
    assert plan.dashboard.listen is None
    assert "dashboard" not in render(plan)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),  # a bare port is loopback, never the LAN by accident
        ('"9100"', ("127.0.0.1", 9100)),
        ('":9100"', ("127.0.0.1", 9100)),
        ('"0.0.0.0:9100"', ("0.0.0.0", 9100)),
        ('"[::1]:9100"', ("::1", 9100)),
        ('"127.0.0.1:0"', ("127.0.0.1", 0)),
    ],
)
def test_listen_forms(tmp_path: Path, value: str, expected: tuple[str, int]) -> None:
    plan = _load(tmp_path, f"[dashboard]\nlisten = {value}\n")
    assert plan.dashboard.listen == expected


def test_listen_is_rendered_and_in_json(tmp_path: Path) -> None:
    plan = _load(tmp_path, '[dashboard]\nlisten = "127.0.0.1:9100"\n')
    assert "  dashboard   127.0.0.1:9100 (and the socket)\n" in render(plan)
    assert plan_to_json(plan)["dashboard"] == {"listen": ["127.0.0.1", 9100]}


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ('"localhost"', '"localhost"'),
        ('"127.0.0.1:99999"', '"127.0.0.1:99999"'),
        ('"::1:9100"', '"::1:9100"'),
        ("true", "true"),
        ('["127.0.0.1:9100"]', '["127.0.0.1:9100"]'),
    ],
)
def test_bad_listen(tmp_path: Path, value: str, got: str) -> None:
    error = _error(tmp_path, f"[dashboard]\nlisten = {value}\n")
    assert error.key == "dashboard.listen"
    assert error.message == (
        f'expected an address like "127.0.0.1:9100", ":9100" or 9100, got {got}'
    )


def test_unknown_key_has_a_hint(tmp_path: Path) -> None:
    error = _error(tmp_path, '[dashboard]\nlisen = "9100"\n')
    assert (error.key, error.message) == (
        "dashboard",
        "unknown key 'lisen' (did you mean 'listen'?)",
    )


def test_not_a_table(tmp_path: Path) -> None:
    error = _error(tmp_path, 'dashboard = "on"\n')
    assert (error.key, error.message) == ("dashboard", 'expected a table, got "on"')


def test_port_shared_with_the_proxy(tmp_path: Path) -> None:
    error = _error(tmp_path, '[proxy]\nlisten = ":8080"\n[dashboard]\nlisten = 8080\n')
    assert (error.key, error.message) == (
        "dashboard.listen",
        "port 8080 is also proxy.listen (127.0.0.1:8080)",
    )


def test_port_inside_a_service_range(tmp_path: Path) -> None:
    error = _error(tmp_path, "[dashboard]\nlisten = 8003\n")
    assert (error.key, error.message) == (
        "dashboard.listen",
        'port 8003 is also used by service "api" (ports 8001-8003)',
    )


def test_a_reload_reports_that_listen_needs_a_restart(tmp_path: Path) -> None:
    old = _load(tmp_path, "")
    new = _load(tmp_path, "[dashboard]\nlisten = 9100\n")
    changes = diff(old, new).lines()
    assert changes == ["! dashboard.listen: changed, takes effect after a daemon restart"]


@pytest.mark.parametrize("table", ["dashboard", "metrics"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '"999.1.1.1:9464"',
            "'999.1.1.1' is not an IPv4 address (each of its four numbers is 0 to 255)",
        ),
        ('"1.2.3:9464"', "'1.2.3' is not an IPv4 address (each of its four numbers is 0 to 255)"),
        ('"bad_host!:9464"', "'bad_host!' is neither an IP address nor a host name"),
        ('"-x.example:9464"', "'-x.example' is neither an IP address nor a host name"),
    ],
)
def test_a_listen_host_that_cannot_be_one_is_refused_at_load(
    tmp_path: Path, table: str, value: str, message: str
) -> None:
    error = _error(tmp_path, f"[{table}]\nlisten = {value}\n")
    assert (error.key, error.message) == (f"{table}.listen", message)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::1]", "localhost", "metrics.example.com"])
def test_a_listen_host_may_be_an_address_or_a_name(tmp_path: Path, host: str) -> None:
    # A name is resolved when the daemon binds (test_listen_limits: the error then).
    assert _load(tmp_path, f'[metrics]\nlisten = "{host}:9464"\n').metrics.listen is not None
