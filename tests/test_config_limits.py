"""memory_limit, rlimits, cgroup caps, user/group, [metrics] and the systemd directories in
corral.toml: what they resolve to, how `corral check` shows them, and every way to get them wrong."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from config import ConfigError, load, plan_to_json, render, socket_of
from config.daemon import runtime_subdir, unit_name
from config.model import CgroupLimits

SERVICE = '[services.api]\ncommand = "api"\n'


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(text))
    return load(path, environ=environ or {})


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert info.value.file == path
    return info.value


def test_limits_and_identity_resolve(tmp_path: Path) -> None:
    plan = _load(
        tmp_path,
        SERVICE
        + """
        memory_limit = "512MB"
        memory_grace = "10s"
        user = "nobody"
        group = "nogroup"
        rlimits = { nofile = 65536, core = "unlimited", nproc = [512, 1024], stack = "8MB" }
        cgroup = { memory_max = "1GB", cpu_max = 1.5, pids_max = 256 }
        """,
    )
    api = plan.services["api"]
    assert (api.memory_limit, api.memory_grace) == (512 << 20, 10.0)
    assert (api.user, api.group) == ("nobody", "nogroup")
    assert dict(api.rlimits) == {
        "nofile": (65536, 65536),
        "core": (-1, -1),
        "nproc": (512, 1024),
        "stack": (8 << 20, 8 << 20),
    }
    assert api.cgroup == CgroupLimits(memory_max=1 << 30, cpu_max=1.5, pids_max=256)
    text = render(plan)
    assert "  run as      nobody:nogroup\n" in text
    assert "  memory      restart above 512MB RSS for 10s\n" in text
    assert "  cgroup      memory.max 1GB, cpu.max 1.5 CPUs, pids.max 256\n" in text
    assert "  rlimits     nofile=65536, core=unlimited, nproc=512:1024, stack=8388608\n" in text
    data = plan_to_json(plan)["services"]["api"]  # type: ignore[index]
    assert data["rlimits"] == {
        "nofile": [65536, 65536],
        "core": [-1, -1],
        "nproc": [512, 1024],
        "stack": [8388608, 8388608],
    }  # type: ignore[index]


def test_defaults_limit_nothing(tmp_path: Path) -> None:
    api = _load(tmp_path, SERVICE).services["api"]
    assert (api.memory_limit, api.memory_grace, api.user, api.group) == (None, 30.0, None, None)
    assert dict(api.rlimits) == {}
    assert not api.cgroup.any()
    assert "run as" not in render(_load(tmp_path, SERVICE))


def test_numeric_user_and_group(tmp_path: Path) -> None:
    api = _load(tmp_path, SERVICE + "user = 65534\ngroup = 65534\n").services["api"]
    assert (api.user, api.group) == ("65534", "65534")


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('memory_limit = "lots"', "memory_limit", 'expected a size like "10MB", got "lots"'),
        ('memory_limit = "10KB"', "memory_limit", 'expected a size of at least 1MB, like "512MB"'),
        ('memory_grace = "5s"', "memory_grace", "is set but memory_limit is not"),
        (
            'memory_limit = "1GB"\nmemory_grace = "soon"',
            "memory_grace",
            'expected a duration like "2s"',
        ),
        ("rlimits = { nofiles = 10 }", "rlimits", "unknown key 'nofiles' (did you mean 'nofile'?)"),
        ('rlimits = { nofile = "many" }', "rlimits.nofile", 'expected a number or "unlimited"'),
        (
            'rlimits = { core = "huge" }',
            "rlimits.core",
            'expected a number, a size like "1GB", or "unlimited", got "huge"',
        ),
        ("rlimits = { nofile = -5 }", "rlimits.nofile", "got -5"),
        ("rlimits = { nofile = [1, 2, 3] }", "rlimits.nofile", "expected a limit or [soft, hard]"),
        (
            "rlimits = { nofile = [2048, 1024] }",
            "rlimits.nofile",
            "soft limit 2048 is above the hard limit 1024",
        ),
        (
            'rlimits = { nofile = ["unlimited", 1024] }',
            "rlimits.nofile",
            "soft limit unlimited is above the hard limit 1024",
        ),
        ("rlimits = 5", "rlimits", "expected a table, got 5"),
        ("cgroup = { memory = 1 }", "cgroup", "unknown key 'memory' (did you mean 'memory_max'?)"),
        ('cgroup = { memory_max = "1KB" }', "cgroup.memory_max", "at least 1MB"),
        ("cgroup = { cpu_max = 0 }", "cgroup.cpu_max", "a number of CPUs from 0.01 to 4096"),
        ('cgroup = { cpu_max = "2" }', "cgroup.cpu_max", 'got "2"'),
        ("cgroup = { pids_max = 0 }", "cgroup.pids_max", "expected an integer >= 1, got 0"),
        ('user = "bad name"', "user", 'expected a user name like "www-data" or a numeric id'),
        ("user = -1", "user", "got -1"),
        ("user = 4294967295", "user", "got 4294967295"),
        ("user = true", "user", "got true"),
        ('group = "staff"', "group", "is set but user is not"),
    ],
)
def test_wrong_limits(tmp_path: Path, line: str, key: str, message: str) -> None:
    error = _error(tmp_path, SERVICE + line + "\n")
    assert error.key == f"services.api.{key}"
    assert message in error.message


def test_metrics_listen(tmp_path: Path) -> None:
    plan = _load(tmp_path, '[metrics]\nlisten = ":9464"\n' + SERVICE)
    assert plan.metrics.listen == ("127.0.0.1", 9464)  # a bare port is never the LAN
    assert "  metrics     127.0.0.1:9464 (and the socket)\n" in render(plan)
    assert _load(tmp_path, SERVICE).metrics.listen is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[metrics]\nlisten = "nowhere"\n', 'expected an address like "127.0.0.1:9464"'),
        ("[metrics]\nlisten = true\n", "got true"),
        ("[metrics]\nlisten = 9100\n[dashboard]\nlisten = 9100\n", "is also dashboard.listen"),
        ('[metrics]\nlisten = 8080\n[proxy]\nlisten = ":8080"\n', "is also proxy.listen"),
        ("[metrics]\nlisten = 7001\n", 'is also used by service "api"'),
    ],
)
def test_wrong_metrics(tmp_path: Path, text: str, message: str) -> None:
    error = _error(tmp_path, text + SERVICE + "port = 7001\n")
    assert error.key == "metrics.listen"
    assert message in error.message


def test_unknown_metrics_key(tmp_path: Path) -> None:
    error = _error(tmp_path, "[metrics]\nport = 1\n" + SERVICE)
    assert (error.key, error.message) == ("metrics", "unknown key 'port'")


def test_systemd_directories_only_inside_our_unit(tmp_path: Path) -> None:
    dirs = {
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "LOGS_DIRECTORY": str(tmp_path / "logs"),
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
    }
    # Some other unit's directories, inherited by a shell in it: not ours.
    plan = _load(tmp_path, SERVICE, dirs)
    assert plan.daemon.state_dir == tmp_path / ".corral"
    assert plan.daemon.logs_dir == tmp_path / ".corral" / "logs"
    plan = _load(tmp_path, SERVICE, {**dirs, "CORRAL_UNIT": "corral-x.service"})
    assert plan.daemon.state_dir == tmp_path / "state"
    assert plan.daemon.logs_dir == tmp_path / "logs"
    assert plan.daemon.socket == tmp_path / "run" / "corral.sock"
    assert "  logs        10MB x 5 files in logs\n" in render(plan)
    # Keys in [daemon] win.
    plan = _load(
        tmp_path,
        '[daemon]\nstate_dir = "s"\nlogs_dir = "l"\nsocket = "c.sock"\n' + SERVICE,
        {**dirs, "CORRAL_UNIT": "corral-x.service"},
    )
    assert (plan.daemon.state_dir, plan.daemon.logs_dir, plan.daemon.socket) == (
        tmp_path / "s",
        tmp_path / "l",
        tmp_path / "c.sock",
    )


def test_the_cli_finds_the_socket_of_the_unit_that_serves_this_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor import unit

    assert unit_name("My Shop!") == "corral-my-shop"
    assert runtime_subdir("My Shop!") == "corral/my-shop"
    run, config_home = tmp_path / "xdg", tmp_path / "config"
    environ = {"XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(config_home)}
    for name, value in environ.items():  # socket_of reads os.environ
        monkeypatch.setenv(name, value)
    text = 'project = "My Shop!"\n' + SERVICE
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"  # two checkouts of one project
    for checkout in (mine, theirs):
        checkout.mkdir()
    assert _load(mine, text, environ).daemon.socket == mine / ".corral" / "corral.sock"
    where = run / "corral" / "my-shop" / "corral.sock"
    where.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(where))
        # A socket with no unit file naming this config is not this config's daemon.
        assert _load(mine, text, environ).daemon.socket == mine / ".corral" / "corral.sock"
        (service,) = unit.units(_load(theirs, text, environ), user=True, socket=False)
        unit.install(
            [service], config_home / "systemd" / "user", True, config_path=theirs / "corral.toml"
        )
        assert _load(theirs, text, environ).daemon.socket == where
        assert socket_of(theirs / "corral.toml") == where  # also for a broken config
        # The other checkout keeps its own daemon (it could not even start one before).
        assert _load(mine, text, environ).daemon.socket == mine / ".corral" / "corral.sock"
        assert socket_of(mine / "corral.toml") == mine / ".corral" / "corral.sock"
    finally:
        listener.close()


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "check", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_warns_of_users_and_groups_this_host_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(SERVICE + 'user = "no-such-user-x"\ngroup = "no-such-group-x"\n')
    done = _check(path)
    assert done.returncode == 0, done.stderr  # the config may be meant for another host
    assert done.stderr.splitlines() == [
        f"corral: warning: {path}: services.api.{key}: no {key} 'no-such-{key}-x' on this "
        "host; a daemon here would fail this service"
        for key in ("user", "group")
    ]
    path.write_text(SERVICE + 'user = "nobody"\ngroup = "0"\n')
    done = _check(path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
