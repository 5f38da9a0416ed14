"""/metrics for the supervisor: the labels docs/api.md promises, one series per instance."""

from __future__ import annotations

import asyncio
from pathlib import Path

from supervisor.metrics import render

from .conftest import PY, all_ready, running_daemon, state_of, wait_until, web_service, write_config


async def test_instance_up_carries_the_state_label(tmp_path: Path) -> None:
    text = (
        web_service("web", instances=2)
        + f"""
[services.job]
command = ["{PY}", "-c", "pass"]
oneshot = true
venv = false
"""
    )
    path = write_config(tmp_path, text)
    async with running_daemon(path) as daemon:
        await wait_until(lambda: all_ready(daemon, "web", 2))
        await wait_until(lambda: state_of(daemon, "job.1") == "completed")
        lines = render(daemon).splitlines()
        assert 'corral_instance_up{service="web",instance="web.1",state="ready"} 1' in lines
        assert 'corral_instance_up{service="job",instance="job.1",state="completed"} 0' in lines
        assert 'corral_desired_instances{service="web"} 2' in lines
        # During a roll the replacement is a second incarnation of web.1: still one series.
        roll = asyncio.create_task(daemon.restart(["web"]))
        while not roll.done():
            series = [
                line.split("{")[1].split(",state=")[0]
                for line in render(daemon).splitlines()
                if line.startswith("corral_instance_up{")
            ]
            assert len(series) == len(set(series)), series
            await asyncio.sleep(0.01)
        await roll
