"""Helpers for tests/test_promote_*.py: example projects, promotion into a directory, file trees.

Not a test module itself. The shop is copied out of examples/ so nothing is written there.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import config
from supervisor.promote import Options, Result, promote, write

ROOT = Path(__file__).parent.parent
SHOP = ROOT / "examples" / "shop"
APPS = Path(__file__).parent / "apps"
GOLDEN = Path(__file__).parent / "golden" / "promote"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"  # see schemas/README.md
CORRAL_SOURCE = "corral-proxy/corral/"  # the copy of Corral itself in the entry image's context


def copy_shop(tmp_path: Path, *, listen: str | None = None, project: str | None = None) -> Path:
    """examples/shop under tmp_path/shop (no state, no database); returns its corral.toml."""
    target = tmp_path / "shop"
    shutil.copytree(SHOP, target, ignore=shutil.ignore_patterns(".corral", "*.db", "__pycache__"))
    path = target / "corral.toml"
    text = path.read_text()
    if listen is not None:
        text = text.replace('listen = "127.0.0.1:8080"', f'listen = "{listen}"')
    if project is not None:
        text = text.replace('project = "shop"', f'project = "{project}"')
    path.write_text(text)
    return path


def full_project(tmp_path: Path) -> Path:
    """A project whose `api` sets every service key, with every [proxy] key set too, and an
    autoscaled `fn` that sets every `scale` key."""
    root = tmp_path / "full"
    (root / "api").mkdir(parents=True)
    (root / "api" / "requirements.txt").write_text("aiohttp>=3.9\n")
    (root / "api" / ".env").write_text("FROM_FILE=1\nSECRET=from-file\n")
    (root / "db").mkdir()
    path = root / "corral.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            project = "full"

            [proxy]
            listen = ["127.0.0.1:9080", "[::1]:9080"]
            timeouts = {{ connect = "2s", read = "20s", idle = "3s", header = "5s", body = "30s", send = "30s" }}
            retries = 1
            retry_on_error = false
            max_body_size = "10MB"
            max_header_size = "32KB"
            queue_timeout = "5s"
            trusted_proxies = ["10.0.0.0/8"]
            eject = {{ failures = 3, cooldown = "20s" }}
            access_log = true
            workers = 2
            max_connections = 500

            [services.migrate]
            command = "python3 migrate.py"
            cwd = "db"
            oneshot = true
            restart = "on-failure"
            venv = false

            [services.db]
            command = "python3 -m http.server {{port}}"
            cwd = "db"
            port = "auto"
            weight = 2
            venv = false
            health = {{ tcp = true, interval = "1s" }}

            [services.api]
            command = ["python", "app.py", "--port", "{{port}}"]
            cwd = "api"
            instances = 3
            port = 8001
            requirements = "requirements.txt"
            python = "{sys.executable}"
            env_file = ".env"
            env = {{ SECRET = "from-table", MODE = "prod" }}
            app = "app:app"
            restart = "on-failure"
            stop_signal = "SIGINT"
            stop_timeout = "15s"
            depends_on = {{ db = "healthy", migrate = "completed" }}
            crash_limit = 4
            crash_window = "2m"
            backoff = {{ initial = "200ms", max = "10s" }}
            crash_loop = "stop"
            crash_cooldown = {{ initial = "30s", max = "10m" }}
            start_timeout = "2m"
            min_uptime = "3s"
            roll = "in-place"
            route = {{ path = "/api", host = "shop.example.com", strip_prefix = true }}
            balance = "hash"
            hash_on = "cookie:session"
            weight = [3, 1, 1]
            drain_timeout = "20s"
            max_surge = 2
            watch = ["**/*.py"]
            watch_ignore = ["tests/*"]
            memory_limit = "512MB"
            memory_grace = "1m"
            rlimits = {{ nofile = 65536, core = 0 }}
            cgroup = {{ memory_max = "1GB", cpu_max = 1.5, pids_max = 256 }}
            user = "1000"
            group = "1000"

            [services.api.health]
            http = "/ready"
            interval = "500ms"
            timeout = "300ms"
            retries = 2
            start_period = "5s"
            restart_unhealthy = false

            [services.fn]
            command = ["python", "app.py", "--port", "{{port}}"]
            cwd = "api"
            port = "auto"
            venv = false
            app = "app:app"
            route = {{ path = "/fn" }}
            scale = {{ min = 0, max = 4, concurrency = 1, window = "30s", panic_window = "3s", panic_threshold = 3.0, idle_timeout = "2m", cold_start_timeout = "15s", idle = "freeze", cold_start_header = true }}
            """
        )
    )
    return path


def without_proxy(tmp_path: Path) -> Path:
    """The fully loaded project with no [proxy] table: routes are set but nothing proxies
    (and no autoscaled service, which needs the proxy)."""
    path = full_project(tmp_path)
    text = path.read_text()
    start, end = text.index("[proxy]"), text.index("[services.migrate]")
    path.write_text(text[:start] + text[end : text.index("[services.fn]")])
    return path


def idle_proxy(tmp_path: Path) -> Path:
    """The fully loaded [proxy] table, but no service with a port for it to route to."""
    text = full_project(tmp_path).read_text()
    root = tmp_path / "idle"
    root.mkdir()
    path = root / "corral.toml"
    proxy = text[text.index("[proxy]") : text.index("[services.migrate]")]
    path.write_text(proxy + '[services.worker]\ncommand = "python3 w.py"\nvenv = false\n')
    return path


def promoted(
    config_path: Path, target: str, out: Path, services: list[str] | None = None, **options: str
) -> Result:
    """Promote `config_path` to `target` into `out` (written) and return the result."""
    plan = config.load(config_path, environ={})
    result = promote(plan, target, out, services or [], Options(**options))
    write(result, out)
    return result


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, by POSIX path relative to it."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
