"""Hostile and absurd configs: each is one clear ConfigError naming file and key, never a crash.

The property tests feed the loader generated documents (random types at known keys, deep
nesting, odd unicode, raw bytes) and accept exactly two outcomes: a Plan or one ConfigError.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import config
from config.model import Plan

SERVICE = '[services.api]\ncommand = "app"\n'


def error_of(tmp_path: Path, text: str | bytes) -> config.ConfigError:
    path = tmp_path / "corral.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    error = caught.value
    assert error.file == path
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("x = " + "[" * 100_000 + "]" * 100_000, "", "nested deeper than 32 levels"),
        ("x = " + "{a = " * 500 + "1" + "}" * 500, "", "nested deeper than 32 levels"),
        ("[" + ".".join(["a"] * 1000) + "]", "a.a.a.a", "nested deeper than 32 levels"),
        ("x = " + "1" * 5000, "", "invalid value: Exceeds the limit (4300 digits)"),
        (
            SERVICE + "instances = 0x" + "f" * 5000,
            "services.api.instances",
            "expected an integer from 0 to 1000, got an integer of about 6020 digits",
        ),
        (
            SERVICE + "instances = 100000000000000000000000",
            "services.api.instances",
            "expected an integer from 0 to 1000, got 100000000000000000000000",
        ),
        (SERVICE + "instances = 1e23", "services.api.instances", "got 1e+23"),
        (SERVICE + "instances = 1001", "services.api.instances", "from 0 to 1000, got 1001"),
        (
            SERVICE + 'stop_timeout = "999999h"',
            "services.api.stop_timeout",
            'expected a duration like "2s" (at most 24h), got "999999h"',
        ),
        (SERVICE + "stop_timeout = 1e300", "services.api.stop_timeout", "got 1e+300"),
        (SERVICE + "stop_timeout = inf", "services.api.stop_timeout", "got inf"),
        (SERVICE + "stop_timeout = 10" + "0" * 400, "services.api.stop_timeout", "at most 24h"),
        (
            SERVICE + 'health = { http = "/", interval = "25h" }\nport = "auto"',
            "services.api.health.interval",
            "(more than 0, at most 24h)",
        ),
        (SERVICE + "port = 99999999999999999999", "services.api.port", "from 1 to 65535"),
        (
            '[daemon]\nlog_max_size = "' + "9" * 400 + 'TB"\n' + SERVICE,
            "daemon.log_max_size",
            'expected a size like "10MB"',
        ),
        (
            '[daemon]\nlog_max_size = "2TB"\n' + SERVICE,
            "daemon.log_max_size",
            'at most "1TB"',
        ),
        ("[daemon]\nlog_keep = 1000000000\n" + SERVICE, "daemon.log_keep", "from 0 to 1000"),
        (
            "[daemon]\nlog_tail_lines = 100000000000\n" + SERVICE,
            "daemon.log_tail_lines",
            "from 0 to 100000",
        ),
        (SERVICE + 'cwd = "~nosuchuser-corral/x"', "services.api.cwd", "cannot use"),
        (SERVICE + 'cwd = "a\\u0000b"', "services.api.cwd", "without NUL characters"),
        (SERVICE + f'cwd = "{"a" * 300}"', "services.api.cwd", "File name too long"),
        (
            "[services." + "a" * 64 + ']\ncommand = "x"',
            "services",
            "at most 63 characters",
        ),
        ('[daemon]\nstate_dir = "corral.toml"\n' + SERVICE, "daemon.state_dir", "not a directory"),
        ('[daemon]\nstate_dir = "."\n' + SERVICE, "daemon.state_dir", "a directory of its own"),
        ('[daemon]\nstate_dir = ".."\n' + SERVICE, "daemon.state_dir", "a directory of its own"),
        ('[daemon]\nsocket = ""\n' + SERVICE, "daemon.socket", "expected a path"),
    ],
    ids=lambda value: value[:30] if isinstance(value, str) else None,
)
def test_absurd_values_are_one_clear_error(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    error = error_of(tmp_path, text)
    assert error.key.startswith(key) if key else error.key == ""
    assert message in error.message, error.message


def test_a_symlink_loop_as_cwd(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    error = error_of(tmp_path, SERVICE + 'cwd = "loop"')
    assert error.key == "services.api.cwd"


def test_non_utf8_file(tmp_path: Path) -> None:
    error = error_of(tmp_path, b'[services.api]\ncommand = "caf\xe9"\n')
    assert error.message.startswith("not UTF-8 text")


def test_default_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / ".corral").write_text("")
    error = error_of(tmp_path, SERVICE)
    assert error.key == "daemon.state_dir"
    assert error.message.endswith(
        "is not a directory (the default state dir; set [daemon] state_dir)"
    )


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 100_000 + "]" * 100_000,
        SERVICE + 'stop_timeout = "999999h"',
        b'[services.api]\ncommand = "caf\xe9"\n',
    ],
    ids=["deep", "999999h", "latin-1"],
)
def test_cli_says_one_line(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "corral.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    for verb in ("check", "up"):
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", verb],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert result.stderr.startswith(f"corral: {path}: ")
        assert result.stderr.count("\n") == 1, result.stderr


# --- property: a Plan or one ConfigError --------------------------------------------------------

_SERVICE_KEYS = (
    *("command", "instances", "port", "cwd", "requirements", "venv", "python", "env", "env_file"),
    *("restart", "stop_signal", "stop_timeout", "depends_on", "oneshot", "health"),
    *("crash_limit", "crash_window", "backoff", "route", "balance", "hash_on", "weight"),
    *("drain_timeout", "max_surge", "watch", "watch_ignore", "nonsense"),
)
_HEALTH_KEYS = ("http", "tcp", "exec", "interval", "timeout", "retries", "start_period")
_DAEMON_KEYS = ("state_dir", "socket", "log_max_size", "log_keep", "log_tail_lines")
_PROXY_KEYS = ("listen", "timeouts", "retries", "retry_on_error", "max_body_size")
_PROXY_KEYS += ("max_header_size", "queue_timeout", "trusted_proxies", "eject", "access_log")

_odd_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            *("", "auto", "2s", "999999h", "1e23", "1m30s", "10MB", "-1", "nan", "0x10"),
            *("~", "~nosuchuser/x", "..", "/", "\x00", "\u202e", "ü", "🐄", "\udcff"[:0]),
            *("{port}", "${X}", "${X:?no}", "$${}", "$", "${", "healthy", "completed"),
            *("127.0.0.1:8080", "[::1]:0", ":99999", "header:X", "cookie:", "SIGTERM"),
            *("/healthz", "a b 'c", "round_robin", "hash", "on-failure", "always"),
        ]
    ),
)
_scalar = st.one_of(
    st.booleans(),
    st.integers(min_value=-3, max_value=70000),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    _odd_text,
    st.datetimes(max_value=datetime.datetime(9999, 1, 1)),
    st.dates(),
    st.times(),
)
_value = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_odd_text, inner, max_size=3),
    max_leaves=8,
)


_BASE: dict[str, object] = {
    "project": "shop",
    "daemon": {"log_max_size": "1MB", "log_keep": 2},
    "proxy": {"listen": "127.0.0.1:0", "timeouts": {"read": "30s"}, "eject": {"failures": 3}},
    "services": {
        "db": {"command": "db", "oneshot": True, "venv": False},
        "api": {
            "command": "app --port {port}",
            "instances": 2,
            "port": "auto",
            "venv": False,
            "env": {"A": "1"},
            "depends_on": {"db": "completed"},
            "health": {"http": "/healthz", "interval": "2s"},
            "backoff": {"initial": "100ms", "max": "2s"},
            "route": {"path": "/api"},
        },
    },
}
_PATHS = [
    *[("project",), ("daemon",), ("proxy",), ("services",), ("services", "api")],
    *[("daemon", key) for key in _DAEMON_KEYS],
    *[("proxy", key) for key in _PROXY_KEYS],
    *[("proxy", "timeouts", key) for key in ("connect", "read", "idle")],
    *[("proxy", "eject", key) for key in ("failures", "cooldown")],
    *[("services", "api", key) for key in _SERVICE_KEYS],
    *[("services", "api", "health", key) for key in _HEALTH_KEYS],
    *[("services", "api", "backoff", key) for key in ("initial", "max")],
    *[("services", "api", "route", key) for key in ("path", "host", "strip_prefix")],
    *[("services", "api", "depends_on", key) for key in ("db", "api", "nope")],
    *[("services", "db", key) for key in ("oneshot", "restart", "instances", "port")],
]
_DELETE = object()


def _mutated(mutations: list[tuple[tuple[str, ...], object]]) -> dict[str, object]:
    """A valid document with a few values replaced (or deleted) at known key paths."""
    import copy

    doc = copy.deepcopy(_BASE)
    for path, value in mutations:
        table: object = doc
        for key in path[:-1]:
            if not isinstance(table, dict):
                break
            table = table.setdefault(key, {})
        if isinstance(table, dict):
            if value is _DELETE:
                table.pop(path[-1], None)
            else:
                table[path[-1]] = value
    return doc


_mutations = st.lists(
    st.tuples(st.sampled_from(_PATHS), _value | st.just(_DELETE)), min_size=1, max_size=3
)
_document = st.one_of(
    _mutations.map(_mutated),
    st.dictionaries(st.sampled_from(["project", "daemon", "proxy", "services"]), _value),
)


def _load(data: bytes) -> Plan | config.ConfigError:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corral.toml"
        path.write_bytes(data)
        try:
            return config.load(path, environ={"X": "1"})
        except config.ConfigError as exc:
            assert str(exc).isprintable(), str(exc)
            return exc


_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_base_document_is_valid() -> None:
    assert isinstance(_load(tomli_w.dumps(_BASE).encode()), Plan)


@_SETTINGS
@given(_document)
def test_any_generated_document_gives_a_plan_or_one_config_error(doc: dict[str, object]) -> None:
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return  # not representable in TOML (e.g. a time with a timezone); nothing to load
    _load(text.encode("utf-8", "surrogatepass"))


@_SETTINGS
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.tuples(st.integers(1, 3000), st.sampled_from(["[", "{a=", "[[a]]\n"])).map(
            lambda spec: (f"x = {spec[1] * spec[0]}").encode()
        ),
    )
)
def test_any_bytes_give_a_plan_or_one_config_error(data: bytes) -> None:
    _load(data)
