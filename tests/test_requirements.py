"""Editing requirements.txt is noticed (by hash) by reload and by restart: a new venv is built
while the old one serves, then the instances roll onto it."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import SupervisorError
from supervisor.reload import Reloader

from .conftest import PY, running_daemon, state_of, wait_until, write_config
from .test_venv import make_wheel

# Prints the installed version of the tiny package, then stays up.
SHOW = (
    "import importlib.metadata as m, time\\n"
    "print('version', m.version('corral-tiny'), flush=True)\\n"
    "time.sleep(600)"
)


def _versions(daemon: object) -> list[str]:
    records = daemon.logs.tail([("tiny", 1)], 500)  # type: ignore[attr-defined]
    return [
        r.line.split()[1] for r in records if r.stream == "stdout" and r.line.startswith("version")
    ]


@pytest.mark.slow
async def test_reload_and_restart_notice_edited_requirements(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = {v: make_wheel(wheels, version=v) for v in ("0.1", "0.2", "0.3")}
    app = tmp_path / "app"
    app.mkdir()
    requirements = app / "requirements.txt"
    requirements.write_text(f"{wheel['0.1']}\n")
    path = write_config(
        tmp_path,
        f"""
[services.tiny]
command = ["python", "-c", "{SHOW}"]
cwd = "{app}"
min_uptime = "0s"
stop_timeout = "2s"
""",
    )
    _ = PY
    async with running_daemon(path) as daemon:
        await wait_until(lambda: _versions(daemon) == ["0.1"], timeout=60, what="0.1 running")
        service = daemon.services["tiny"]
        first_venv = service.venv

        # The file changed, the config did not: reload notices by the venv's key.
        requirements.write_text(f"{wheel['0.2']}\n")
        result = await Reloader(daemon).reload()
        assert result["changes"] == [
            "~ tiny: requirements changed, new virtualenv, rolling restart"
        ]
        await wait_until(lambda: _versions(daemon)[-1:] == ["0.2"], timeout=60)
        assert service.venv != first_venv
        assert state_of(daemon, "tiny.1") == "running"

        # So does restart.
        requirements.write_text(f"{wheel['0.3']}\n")
        await daemon.restart(["tiny"])
        await wait_until(lambda: _versions(daemon)[-1:] == ["0.3"], timeout=60)

        # A build that fails restarts nothing: the running instance keeps the last good venv.
        pid = service.instances[1].pid
        requirements.write_text("corral-no-such-package-xyz==1.0\n")
        with pytest.raises(SupervisorError, match=r"not restarted, .* virtualenv build failed"):
            await daemon.restart(["tiny"])
        assert service.instances[1].pid == pid and state_of(daemon, "tiny.1") == "running"
        # And nothing to rebuild is no change at all.
        requirements.write_text(f"{wheel['0.3']}\n")
        assert (await Reloader(daemon).reload())["changes"] == []
