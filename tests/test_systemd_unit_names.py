"""One unit per config: its name distinguishes config files and projects without an ASCII
spelling, `--install` / `-o` never silently replace another config's unit, and a unit's
/run socket is only used for the config that unit serves (another checkout of a project with
the same name runs its own daemon beside it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.daemon import unit_config, unit_name

from . import conftest
from .conftest import PY

SERVICE = f"""
[services.api]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
venv = false
"""


def corral(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return conftest.write_config(directory, text)


def test_unit_names_tell_configs_apart() -> None:
    assert unit_name("shop", Path("/srv/shop/corral.toml")) == "corral-shop"
    assert unit_name("shop", Path("/srv/shop/staging.toml")) == "corral-shop-staging"
    assert unit_name("Shop Stack", Path("/srv/x/Prod Env.toml")) == "corral-shop-stack-prod-env"
    assert unit_name("Café") == "corral-cafe"  # transliterated where it can be
    # No ASCII spelling: a digest of the name, so two such projects are two units.
    shop, market = unit_name("商店"), unit_name("市场")
    assert shop.startswith("corral-p-") and len(shop) == len("corral-p-") + 8
    assert market.startswith("corral-p-") and market != shop
    mixed = unit_name("shop 商店")
    assert mixed.startswith("corral-shop-") and mixed != unit_name("shop")


def test_two_config_files_get_two_units_and_another_checkout_is_not_overwritten(
    tmp_path: Path,
) -> None:
    out = tmp_path / "units"
    main = write_config(tmp_path / "shop", 'project = "shop"\n' + SERVICE)
    staging = main.parent / "staging.toml"
    staging.write_text(main.read_text())
    assert corral("systemd-unit", "-f", str(main), "-o", str(out)).returncode == 0
    done = corral("systemd-unit", "-f", str(staging), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out / 'corral-shop-staging.service'}\n"
    assert unit_config(out / "corral-shop.service") == main
    assert unit_config(out / "corral-shop-staging.service") == staging
    assert "StateDirectory=corral/shop-staging" in (out / "corral-shop-staging.service").read_text()

    # Another checkout of the same project: same unit name, so it is refused, clearly.
    other = write_config(tmp_path / "elsewhere" / "shop", 'project = "shop"\n' + SERVICE)
    done = corral("systemd-unit", "-f", str(other), "-o", str(out))
    assert done.returncode != 0 and done.stdout == ""
    assert (
        f"{out / 'corral-shop.service'} exists and is the unit for {main}; --force replaces it"
    ) in done.stderr, done.stderr
    assert unit_config(out / "corral-shop.service") == main  # untouched
    done = corral("systemd-unit", "-f", str(other), "-o", str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert unit_config(out / "corral-shop.service") == other

    # Its own unit, changed (the config got a new service): updated without --force.
    before = (out / "corral-shop.service").read_text()
    other.write_text(other.read_text() + SERVICE.replace("api", "worker"))
    done = corral("systemd-unit", "-f", str(other), "-o", str(out))
    assert done.returncode == 0, done.stderr
    after = (out / "corral-shop.service").read_text()
    assert after != before and "TimeoutStopSec=" in after  # one more service to stop

    # A unit file of someone else's (not written by us) is not replaced either.
    (out / "corral-shop.service").write_text("[Service]\nExecStart=/bin/true\n")
    done = corral("systemd-unit", "-f", str(other), "-o", str(out))
    assert done.returncode != 0
    assert "exists and is not a unit written for this config; --force" in done.stderr


def test_another_checkout_runs_beside_a_unit_daemon_of_the_same_project(tmp_path: Path) -> None:
    """The reviewer's case: the unit's daemon serves /…/a/app; `corral up -d` in /…/b/app
    (same directory name, so the same default project) used to fail with "the daemon on
    /run/corral/app/corral.sock serves … not …"."""
    run, config_home = tmp_path / "run", tmp_path / "config"
    run.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(config_home)}
    served = write_config(tmp_path / "a" / "app", SERVICE)
    other = write_config(tmp_path / "b" / "app", SERVICE)
    done = corral("systemd-unit", "--user", "--install", "-f", str(served), env=env)
    assert done.returncode == 0, done.stderr
    # The daemon as the user unit starts it: CORRAL_UNIT and systemd's directories.
    runtime = run / "corral" / "app"
    runtime.mkdir(parents=True)
    unit_env = {
        **env,
        "CORRAL_UNIT": "corral-app.service",
        "RUNTIME_DIRECTORY": str(runtime),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "LOGS_DIRECTORY": str(tmp_path / "logs"),
    }
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon", "-f", str(served)],
        cwd=served.parent,
        env={**os.environ, **unit_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # `corral ps` in the served checkout reaches the unit's daemon on its /run socket.
        deadline = time.monotonic() + 60
        done = corral("ps", "--json", cwd=served.parent, env=env)
        while not (done.returncode == 0 and '"api.1"' in done.stdout):
            assert time.monotonic() < deadline, done.stderr
            done = corral("ps", "--json", cwd=served.parent, env=env)
        assert done.returncode == 0 and '"api.1"' in done.stdout, done.stderr
        done = corral("status", cwd=served.parent, env=env)
        assert f"socket   {runtime / 'corral.sock'}" in done.stdout, done.stdout
        # The other checkout starts a daemon of its own, on its own socket.
        done = corral("up", "-d", "--timeout", "60", cwd=other.parent, env=env)
        assert done.returncode == 0, done.stderr
        try:
            done = corral("status", cwd=other.parent, env=env)
            assert f"socket   {other.parent / '.corral' / 'corral.sock'}" in done.stdout
            assert f"config   {other}" in done.stdout, done.stdout
        finally:
            assert corral("down", cwd=other.parent, env=env).returncode == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()


def test_a_unit_written_before_x_corral_config_is_still_recognised(tmp_path: Path) -> None:
    """Units from the first version name their config only in their first line."""
    out = tmp_path / "units"
    path = write_config(tmp_path / "shop", 'project = "shop"\n' + SERVICE)
    assert corral("systemd-unit", "-f", str(path), "-o", str(out)).returncode == 0
    service = out / "corral-shop.service"
    old = "\n".join(
        line for line in service.read_text().splitlines() if not line.startswith("X-Corral-Config=")
    )
    service.write_text(old + "\n")
    assert unit_config(service) == path
    done = corral("systemd-unit", "-f", str(path), "-o", str(out))  # updated, no --force
    assert done.returncode == 0, done.stderr
    assert f"X-Corral-Config={path}" in service.read_text().splitlines()
    socket = out / "corral-shop.socket"
    socket.write_text(
        f"# corral-shop.socket: written by `corral systemd-unit --socket` for {path}\n"
    )
    assert unit_config(socket) == path
