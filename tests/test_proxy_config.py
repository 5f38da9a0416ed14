"""The `[proxy]` table's limits and timeouts, and the descriptor budget they default from."""

from __future__ import annotations

import resource
import textwrap
from pathlib import Path

import pytest

import config
from config.errors import ConfigError
from proxy import limits


def load_proxy(tmp_path: Path, table: str) -> config.model.ProxySpec:
    path = tmp_path / "corral.toml"
    path.write_text(
        textwrap.dedent(table) + '\n[services.web]\ncommand = ["true"]\nport = 8001\nvenv = false\n'
    )
    spec = config.load(path).proxy
    assert spec is not None
    return spec


def test_max_connections_is_derived_unless_set(tmp_path: Path) -> None:
    assert load_proxy(tmp_path, "[proxy]\n").max_connections is None
    assert load_proxy(tmp_path, "[proxy]\nmax_connections = 500\n").max_connections == 500


@pytest.mark.parametrize("value", ["0", "-3", '"many"', "1.5"])
def test_max_connections_must_be_a_positive_integer(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"proxy\.max_connections"):
        load_proxy(tmp_path, f"[proxy]\nmax_connections = {value}\n")


def test_the_reserve_grows_with_the_limit() -> None:
    # reserve = 256 + limit / 8; two descriptors per client connection (it and its backend).
    assert limits.reserve_for(1024) == 384
    assert limits.default_max_connections(1024) == 320
    assert limits.default_max_connections(65536) == (65536 - 256 - 8192) // 2
    assert limits.default_max_connections(300) == limits.MIN_CONNECTIONS


def test_the_default_follows_the_process_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = soft if soft != resource.RLIM_INFINITY else 1 << 20
    assert limits.nofile_limit() == soft
    assert limits.default_max_connections() == limits.default_max_connections(soft)


def test_client_timeouts_default_like_nginx_except_the_header(tmp_path: Path) -> None:
    spec = load_proxy(tmp_path, "[proxy]\n")
    assert (spec.header_timeout, spec.body_timeout, spec.send_timeout) == (10.0, 60.0, 60.0)
    spec = load_proxy(
        tmp_path, '[proxy]\ntimeouts = { header = "2s", body = "30s", send = "1m", read = "5s" }\n'
    )
    assert (spec.header_timeout, spec.body_timeout, spec.send_timeout) == (2.0, 30.0, 60.0)
    assert spec.read_timeout == 5.0


@pytest.mark.parametrize("key", ["header", "body", "send"])
def test_client_timeouts_must_be_positive_durations(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"proxy\.timeouts\.{key}"):
        load_proxy(tmp_path, f'[proxy]\ntimeouts = {{ {key} = "0s" }}\n')
    with pytest.raises(ConfigError, match=rf"proxy\.timeouts\.{key}"):
        load_proxy(tmp_path, f'[proxy]\ntimeouts = {{ {key} = "soon" }}\n')


def test_an_unknown_timeout_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'header'"):
        load_proxy(tmp_path, '[proxy]\ntimeouts = { headers = "2s" }\n')
