"""The `scale` table: Knative's names and defaults, its bounds, and what it excludes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config import ConfigError, load, render
from config.model import IdleMode, ScaleSpec

_HEAD = """
[proxy]
listen = "127.0.0.1:0"

[services.api]
command = "serve {port}"
port = "auto"
venv = false
"""


def _load(tmp_path: Path, scale: str, head: str = _HEAD) -> ScaleSpec:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(head) + scale + "\n")
    spec = load(path, environ={}).services["api"]
    assert spec.scale is not None
    return spec.scale


def _error(tmp_path: Path, scale: str, head: str = _HEAD) -> ConfigError:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(head) + scale + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    return info.value


def test_defaults_are_knatives(tmp_path: Path) -> None:
    scale = _load(tmp_path, "scale = {}")

    assert scale == ScaleSpec(
        min=0,
        max=10,
        target=100.0,
        concurrency=0,
        window=60.0,
        panic_window=6.0,
        panic_threshold=2.0,
        idle_timeout=60.0,
        cold_start_timeout=30.0,
        idle=IdleMode.STOP,
        cold_start_header=False,
    )


def test_every_key(tmp_path: Path) -> None:
    scale = _load(
        tmp_path,
        'scale = { min = 1, max = 8, target = 0.5, concurrency = 4, window = "20s", '
        'panic_window = "2s", panic_threshold = 3, idle_timeout = "5m", '
        'cold_start_timeout = "10s", cold_start_header = true }',
    )

    assert (scale.min, scale.max, scale.target, scale.concurrency) == (1, 8, 0.5, 4)
    assert (scale.window, scale.panic_window, scale.panic_threshold) == (20.0, 2.0, 3.0)
    assert (scale.idle_timeout, scale.cold_start_timeout, scale.cold_start_header) == (
        300.0,
        10.0,
        True,
    )


def test_derived_defaults_follow_knative(tmp_path: Path) -> None:
    # The target defaults to containerConcurrency when that is set; the panic window is 10 %
    # of the stable window (never under 1 s); the last instance goes after a quiet window.
    scale = _load(tmp_path, 'scale = { concurrency = 1, window = "30s" }')
    assert (scale.target, scale.panic_window, scale.idle_timeout) == (1.0, 3.0, 30.0)
    assert _load(tmp_path, 'scale = { window = "5s" }').panic_window == 1.0


def test_the_count_starts_at_min_and_ports_are_checked_up_to_max(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(
        textwrap.dedent(_HEAD).replace('port = "auto"', "port = 8001")
        + 'scale = { min = 2, max = 3 }\nroute = { path = "/" }\n'
        + '[services.db]\ncommand = "db"\nport = 8003\nvenv = false\n'
    )
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert info.value.key == "services.db.port"
    assert info.value.message == 'port 8003 is also used by service "api" (ports 8001-8003)'

    path.write_text(path.read_text().replace("port = 8003", "port = 8004"))
    plan = load(path, environ={})
    assert plan.services["api"].instances == 2
    assert (
        "autoscaled 2-3, target 100 in flight, window 1m (panic 6s at 200%), ports 8001-8003"
        in (render(plan))
    )


def test_check_shows_what_happens_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(
        textwrap.dedent(_HEAD)
        + 'scale = { max = 4, concurrency = 1, idle = "freeze", idle_timeout = "90s" }\n'
    )

    assert (
        "  instances   autoscaled 0-4, target 1 in flight (at most 1), window 1m (panic 6s at "
        "200%), frozen after 1m30s idle, cold start within 30s, port auto"
    ) in render(load(path, environ={}))


@pytest.mark.parametrize(
    ("scale", "key", "message"),
    [
        ("scale = 3", "scale", "expected a table, got 3"),
        (
            "scale = { mni = 0 }",
            "scale",
            "unknown key 'mni' (did you mean 'min'?)",
        ),
        ("scale = { min = -1 }", "scale.min", "expected an integer from 0 to 1000, got -1"),
        ("scale = { max = 0 }", "scale.max", "expected an integer from 1 to 1000, got 0"),
        ("scale = { min = 3, max = 2 }", "scale.max", "expected an integer >= min (3), got 2"),
        (
            "scale = { target = 0 }",
            "scale.target",
            "expected a number from 0.01 to 1000, got 0",
        ),
        (
            'scale = { target = "10" }',
            "scale.target",
            'expected a number from 0.01 to 1000, got "10"',
        ),
        (
            "scale = { concurrency = 2, target = 3 }",
            "scale.target",
            "expected a number <= concurrency (2): an instance never holds more than that, got 3",
        ),
        (
            "scale = { concurrency = 1001 }",
            "scale.concurrency",
            "expected an integer from 0 to 1000, got 1001",
        ),
        (
            'scale = { window = "500ms" }',
            "scale.window",
            'expected a duration from "1s" to "1h", got "500ms"',
        ),
        (
            'scale = { window = "2h" }',
            "scale.window",
            'expected a duration from "1s" to "1h", got "2h"',
        ),
        (
            'scale = { window = "10s", panic_window = "11s" }',
            "scale.panic_window",
            'expected a duration from "1s" to the window (10s), got "11s"',
        ),
        (
            "scale = { panic_threshold = 1.0 }",
            "scale.panic_threshold",
            "expected a number from 1.1 to 10, got 1.0",
        ),
        (
            'scale = { idle_timeout = "soon" }',
            "scale.idle_timeout",
            'expected a duration like "2s" (at most 24h), got "soon"',
        ),
        (
            "scale = { cold_start_timeout = 0 }",
            "scale.cold_start_timeout",
            'expected a duration like "2s" (more than 0, at most 24h), got 0',
        ),
        (
            'scale = { idle = "sleep" }',
            "scale.idle",
            'expected "stop" or "freeze", got "sleep"',
        ),
        (
            'scale = { min = 1, idle = "freeze" }',
            "scale.idle",
            '"freeze" applies to the last instance once idle, and min = 1 keeps 1 running: '
            "set min = 0, or remove idle",
        ),
        (
            'scale = { cold_start_header = "yes" }',
            "scale.cold_start_header",
            'expected true or false, got "yes"',
        ),
    ],
)
def test_bad_values(tmp_path: Path, scale: str, key: str, message: str) -> None:
    error = _error(tmp_path, scale)

    assert (error.key, error.message) == (f"services.api.{key}", message)


def test_instances_and_scale_are_exclusive(tmp_path: Path) -> None:
    error = _error(tmp_path, "instances = 2\nscale = { max = 4 }")

    assert error.key == "services.api.scale"
    assert error.message == (
        "instances and scale are exclusive: an autoscaled service runs from scale.min to "
        "scale.max instances (remove instances, or remove scale for a fixed count)"
    )


def test_an_autoscaled_service_needs_a_port(tmp_path: Path) -> None:
    head = '[proxy]\nlisten = "127.0.0.1:0"\n[services.api]\ncommand = "work"\nvenv = false\n'

    error = _error(tmp_path, "scale = {}", head)

    assert (error.key, error.message) == (
        "services.api.scale",
        "needs the service to have a port (its requests are counted)",
    )


def test_an_autoscaled_service_needs_the_proxy(tmp_path: Path) -> None:
    error = _error(tmp_path, "scale = {}", _HEAD.replace('[proxy]\nlisten = "127.0.0.1:0"', ""))

    assert (error.key, error.message) == (
        "services.api.scale",
        "an autoscaled service must be behind Corral's proxy, which counts its requests and "
        "holds them while it is at zero: add a [proxy] table",
    )


def test_an_autoscaled_service_needs_a_route(tmp_path: Path) -> None:
    # Two services with ports: no route is made up for either.
    head = _HEAD + '[services.web]\ncommand = "web {port}"\nport = "auto"\nvenv = false\n'
    text = textwrap.dedent(head).replace(
        "[services.web]", 'scale = {}\n[services.web]\nroute = { path = "/web" }'
    )

    error = _error(tmp_path, "", text)

    assert error.key == "services.api.scale"
    assert error.message.endswith('add a route (route = { path = "/" })')


def test_a_oneshot_cannot_be_autoscaled(tmp_path: Path) -> None:
    error = _error(tmp_path, 'oneshot = true\nrestart = "no"\nscale = {}')

    assert (error.key, error.message) == (
        "services.api.scale",
        "a oneshot task runs once: it cannot be autoscaled",
    )


def test_weights_count_up_to_max(tmp_path: Path) -> None:
    assert _load(tmp_path, "scale = { max = 3 }\nweight = [3, 2, 1]").max == 3
    error = _error(tmp_path, "scale = { max = 2 }\nweight = [3, 2, 1]")
    assert error.message == "expected at most 2 weights (one per instance), got 3"
