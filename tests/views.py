"""Support for the view tests that drive real tools: tmux (a terminal) and Chromium (Playwright).

Locally they skip, naming what is missing; in CI, where `CORRAL_REQUIRE` lists a capability
("tmux", "browser" or "all"), a missing tool fails the test instead, so a green run means the
views were really tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.client import Client

from .conftest import APPS, token_processes

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium, never a downloaded one; nothing phones home during tests.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"


def require(
    capability: str, missing: str | None, how: str = "install it with .ci/setup-views"
) -> None:
    """Skip (or, when CI requires `capability`, fail) if `missing` says what is absent."""
    if missing is None:
        return
    wanted = {c.strip() for c in os.environ.get("CORRAL_REQUIRE", "").split(",") if c.strip()}
    if capability in wanted or "all" in wanted:
        pytest.fail(f"CORRAL_REQUIRE has {capability!r} but {missing}")
    pytest.skip(f"{missing} ({how})")


def require_tmux() -> str:
    path = shutil.which("tmux")
    require("tmux", None if path else "tmux is not installed")
    assert path is not None
    return path


def require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require("browser", "playwright is not installed (pip install -e '.[test]')")
    require("browser", None if CHROMIUM.exists() else f"no Chromium at {CHROMIUM}")


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """docs/img/<name> when CORRAL_SCREENSHOTS=1 (`make screenshots`), else a temp file."""
    if os.environ.get("CORRAL_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        return DOCS_IMG / name
    return tmp_path / name


def want_screenshots() -> bool:
    return os.environ.get("CORRAL_SCREENSHOTS") == "1"


# --- a detached daemon, started and stopped with the real CLI -----------------------------


def stack_toml(dashboard: bool = True) -> str:
    """api x3 and web x2 behind the proxy, a worker without a port."""
    web = f'command = ["{sys.executable}", "{APPS / "web.py"}"]'
    health = '{ http = "/healthz", interval = "300ms", timeout = "200ms", retries = 2 }'
    tick = "import time\\nwhile True: print('processed job', flush=True); time.sleep(0.5)"
    text = 'project = "shop"\n[proxy]\nlisten = "127.0.0.1:0"\n'
    if dashboard:
        text += '[dashboard]\nlisten = "127.0.0.1:0"\n'
    for name, count, path in (("api", 3, "/api"), ("web", 2, "/")):
        text += f"""
[services.{name}]
{web}
instances = {count}
port = "auto"
venv = false
health = {health}
backoff = {{ initial = "20ms", max = "200ms" }}
route = {{ path = "{path}" }}
"""
    text += f"""
[services.worker]
command = ["{sys.executable}", "-c", "{tick}"]
venv = false
stop_timeout = "1s"
"""
    return text


def _run_corral(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CORRAL_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def corral(cwd: Path, *args: str, timeout: float = 60) -> str:
    result = _run_corral(cwd, *args, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result.stdout


def ps(cwd: Path) -> list[dict[str, Any]]:
    rows = json.loads(corral(cwd, "ps", "--json"))
    return [r for r in rows if not r["retiring"] and not r["incoming"]]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def detached_stack(tmp_path: Path, text: str | None = None) -> Iterator[Path]:
    """`corral up -d` in tmp_path; `corral down` after, asserting nothing is left running."""
    (tmp_path / "corral.toml").write_text(text or stack_toml())
    token = ""
    try:
        up = _run_corral(tmp_path, "up", "-d")
        if up.returncode != 0 and not (tmp_path / ".corral" / "corral.sock").exists():
            raise AssertionError(f"corral up -d -> {up.returncode}\n{up.stderr}")
        token = json.loads((tmp_path / ".corral" / "state.json").read_text())["token"]
        # Polled here rather than trusting `up -d` alone: its wait can answer while new
        # instances are still in their initial state (a daemon race, reported separately).
        wait_for(
            lambda: all(r["state"] in ("ready", "running") for r in ps(tmp_path)),
            60,
            f"every instance up (corral up -d said: {up.stderr.strip() or 'ok'})",
        )
        yield tmp_path
    finally:
        if (tmp_path / ".corral" / "corral.sock").exists():
            _run_corral(tmp_path, "down")
        if token:
            assert token_processes(token) == []


def proxy_address(project: Path) -> str:
    status = Client(project / ".corral" / "corral.sock").call("GET", "/v1/status")
    return str(status["proxy"]["listen"][0])


@contextlib.contextmanager
def traffic(address: str, paths: tuple[str, ...] = ("/api/items", "/")) -> Iterator[None]:
    """Requests through the proxy in a background thread, so sparklines have something."""
    stop = threading.Event()

    def run() -> None:
        n = 0
        while not stop.is_set():
            path = paths[0] if n % 3 else paths[-1]  # api gets two in three
            n += 1
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{address}{path}", timeout=2).read()
            stop.wait(0.01 + (n % 20) * 0.002)

    thread = threading.Thread(target=run, name="traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


# --- screenshots --------------------------------------------------------------------------


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium under Playwright (the caller has checked require_browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def terminal_png(ansi: str, columns: int, path: Path, title: str) -> None:
    """A terminal capture (tmux capture-pane -e) drawn as a PNG, through Rich's SVG export."""
    import io
    import re

    from rich.console import Console
    from rich.text import Text

    console = Console(
        record=True,
        width=columns,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
    )
    for line in ansi.rstrip("\n").split("\n"):
        console.print(Text.from_ansi(line), crop=True, soft_wrap=False, no_wrap=True)
    svg = console.export_svg(title=title)
    # No network here, and none wanted: the web font Rich names falls back to a local one.
    svg = re.sub(r"@font-face\s*{[^}]*}", "", svg)
    svg = svg.replace("Fira Code", "DejaVu Sans Mono")
    with chromium() as browser:
        page = browser.new_page(device_scale_factor=1)
        page.set_content(f"<body style='margin:0;background:#fff'>{svg}</body>")
        page.locator("svg").screenshot(path=str(path))
