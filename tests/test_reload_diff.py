"""Reload is split in two: a pure diff of two plans, and the daemon applying it through
Service methods. Nobody else writes the daemon's or a service's state."""

from __future__ import annotations

from pathlib import Path

import pytest

import config
from supervisor.reload import diff

from .conftest import (
    all_ready,
    running_daemon,
    sleeper_service,
    wait_until,
    web_service,
    write_config,
)

_sleeper = sleeper_service


def _load(tmp_path: Path, name: str, text: str) -> config.Plan:
    path = tmp_path / name
    path.write_text(text)
    return config.load(path, environ={})


def test_diff_sorts_every_kind_of_change(tmp_path: Path) -> None:
    old = _load(
        tmp_path,
        "a.toml",
        '[proxy]\nlisten = "127.0.0.1:0"\n'
        + _sleeper("keep")
        + _sleeper("gone")
        + _sleeper("cmd")
        + _sleeper("pol")
        + _sleeper("grow"),
    )
    new = _load(
        tmp_path,
        "b.toml",
        '[proxy]\nlisten = "127.0.0.1:0"\nretries = 5\n[daemon]\nlog_keep = 2\n'
        + _sleeper("keep")
        + _sleeper("cmd", 'env = { X = "1" }')
        + _sleeper("pol", "crash_limit = 9")
        + _sleeper("grow", "instances = 3")
        + _sleeper("added"),
    )
    changes = diff(old, new)
    assert changes.added == ("added",)
    assert changes.removed == ("gone",)
    assert changes.rolled == ("cmd",)
    assert changes.updated == ("pol",)
    assert dict(changes.scaled) == {"grow": 3}
    assert changes.proxy_changed
    assert changes.needs_restart == ("[daemon]",)
    with pytest.raises(TypeError):
        changes.scaled["grow"] = 4  # type: ignore[index]
    # Pure: the same inputs give the same answer, and a plan compared with itself is no change.
    assert diff(old, new) == changes
    assert diff(new, new).lines() == []


async def test_the_daemon_applies_a_diff_through_its_services(tmp_path: Path) -> None:
    path = write_config(tmp_path, web_service("web") + _sleeper("work"))
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 1))
        old = daemon.plan
        path.write_text(
            web_service("web", extra="crash_limit = 7") + _sleeper("work", "instances = 2")
        )
        new = config.load(path)
        changes = await daemon.apply_plan(new)
        assert changes == diff(old, new)
        assert changes.updated == ("web",) and dict(changes.scaled) == {"work": 2}
        # The plan in force is the new one (keeping the [daemon] settings it started with);
        # the services took their new specs and counts through their own methods.
        assert daemon.plan.services == new.services
        assert daemon.plan.daemon == old.daemon
        assert daemon.services["web"].spec is new.services["web"]
        assert daemon.services["work"].desired == 2
        assert old.services["work"].instances == 1  # the old plan is untouched


async def test_service_and_daemon_state_is_read_only_from_outside(tmp_path: Path) -> None:
    path = write_config(tmp_path, _sleeper("work"))
    async with running_daemon(path) as daemon:
        service = daemon.services["work"]
        for attr, value in (
            ("spec", service.spec),
            ("desired", 3),
            ("phase", "running"),
            ("error", None),
        ):
            with pytest.raises(AttributeError):
                setattr(service, attr, value)
        for attr, value in (("plan", daemon.plan), ("services", {})):
            with pytest.raises(AttributeError):
                setattr(daemon, attr, value)
        with pytest.raises(TypeError):
            service.instances[9] = service.instances[1]  # type: ignore[index]
        with pytest.raises(TypeError):
            daemon.services["other"] = service  # type: ignore[index]


def test_a_changed_venv_key_rolls_a_service_whose_config_is_the_same(tmp_path: Path) -> None:
    plan = _load(tmp_path, "a.toml", _sleeper("api") + _sleeper("worker"))
    changes = diff(plan, plan, venvs_changed={"api"})
    assert changes.rolled == ("api",) and changes.rebuilt == ("api",)
    assert changes.lines() == ["~ api: requirements changed, new virtualenv, rolling restart"]
