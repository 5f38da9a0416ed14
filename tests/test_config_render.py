"""`corral check` output: the text rendering and the JSON form of a plan."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from config import load, plan_to_json, render
from config.model import Plan

CONFIG = """
[proxy]
listen = [":8080", "[::1]:8080"]

[services.api]
command = "python app.py --port {port}"
instances = 3
port = 8001
cwd = "api"
python = "python3.11"
env = { DEBUG = "1", TOKEN = "secret-value" }
depends_on = { db = "healthy" }
health = { http = "/healthz", interval = "500ms" }
route = { path = "/api", host = "api.localhost", strip_prefix = true }
balance = "hash"
hash_on = "header:X-User"
weight = [3, 1]

[services.db]
command = ["db", "--name", "my shop"]
port = 5432
venv = false
health = { tcp = true }

[services.jobs]
command = "python jobs.py"
oneshot = true
venv = false
"""


def _plan(tmp_path: Path) -> Plan:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "requirements.txt").write_text("aiohttp\n")
    path = tmp_path / "corral.toml"
    path.write_text(CONFIG)
    return load(path, environ={})


def test_render(tmp_path: Path) -> None:
    plan = _plan(tmp_path)

    expected = f"""\
        project {tmp_path.name} ({plan.path})
          state_dir   .corral
          socket      .corral/corral.sock
          logs        10MB x 5 files
          proxy       127.0.0.1:8080, [::1]:8080

        db
          command     db --name 'my shop'
          instances   1, port 5432
          cwd         .
          venv        none
          env         -
          health      tcp every 2s (timeout 1s, 3 retries)
          depends_on  -
          restart     always, stop SIGTERM then SIGKILL after 10s
          route       not proxied
          roll        in place, one at a time (port 5432 kept)

        api
          command     python app.py --port {{port}}
          instances   3, ports 8001-8003
          cwd         api
          venv        python3.11, api/requirements.txt
          env         DEBUG, TOKEN
          health      http /healthz every 500ms (timeout 500ms, 3 retries)
          depends_on  db (healthy)
          restart     always, stop SIGTERM then SIGKILL after 10s
          route       api.localhost/api -> hash on header X-User, weights [3, 1], strip prefix
          roll        surge onto fresh ports

        jobs
          command     python jobs.py
          instances   1, no port, oneshot
          cwd         .
          venv        none
          env         -
          health      -
          depends_on  -
          restart     no, stop SIGTERM then SIGKILL after 10s
          route       not proxied
        """
    assert render(plan) == textwrap.dedent(expected)
    assert "secret-value" not in render(plan)


def test_plan_to_json_is_serialisable(tmp_path: Path) -> None:
    plan = _plan(tmp_path)

    data = json.loads(json.dumps(plan_to_json(plan)))

    assert data["path"] == str(plan.path)
    assert list(data["services"]) == ["db", "api", "jobs"]
    api = data["services"]["api"]
    assert api["command"] == ["python", "app.py", "--port", "{port}"]
    assert api["stop_signal"] == "SIGTERM"
    assert api["restart"] == "always"
    assert api["depends_on"] == {"db": "healthy"}
    assert api["health"]["kind"] == "http"
    assert api["route"] == {"path": "/api", "host": "api.localhost", "strip_prefix": True}
    assert api["hash_key"] == {"source": "header", "name": "X-User"}
    assert api["weights"] == [3, 1]
    assert data["proxy"]["listen"] == [["127.0.0.1", 8080], ["::1", 8080]]
    assert data["daemon"]["socket"] == str(plan.daemon.socket)


def test_render_shows_start_up_rules_that_are_not_the_default(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        '[services.w]\ncommand = "w"\nvenv = false\nmin_uptime = "5s"\n'
        '[services.p]\ncommand = "p"\nvenv = false\nport = 9000\nstart_timeout = "2m"\n'
        '[services.d]\ncommand = "d"\nvenv = false\nport = 9100\n'
    )
    text = render(load(tmp_path / "corral.toml", environ={}))
    assert "  start       running after 5s up\n" in text
    assert "  start       ready within 2m\n" in text
    assert text.count("  start ") == 2  # d keeps the defaults: no line


def test_render_shows_a_crash_loop_rule_that_is_not_the_default(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        '[services.a]\ncommand = "a"\nvenv = false\ncrash_loop = "stop"\n'
        '[services.b]\ncommand = "b"\nvenv = false\ncrash_cooldown = { initial = "1s", max = "1m" }\n'
        '[services.c]\ncommand = "c"\nvenv = false\n'
    )
    text = render(load(tmp_path / "corral.toml", environ={}))
    assert "  crash_loop  failed for good after 5 crashes in 1m\n" in text
    assert "  crash_loop  retried 1s after 5 crashes in 1m, doubling to 1m\n" in text
    assert text.count("  crash_loop  ") == 2
