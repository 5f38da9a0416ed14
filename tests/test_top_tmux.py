"""`corral top` in a real terminal (tmux) against a real detached daemon: keys, exit, colour."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .views import (
    detached_stack,
    proxy_address,
    ps,
    require_browser,
    require_tmux,
    screenshot_path,
    terminal_png,
    traffic,
    wait_for,
    want_screenshots,
)

pytestmark = [pytest.mark.views, pytest.mark.timeout(240)]


class Terminal:
    """One tmux server of our own (its socket in the test's directory), one pane, one command."""

    def __init__(self, tmux: str, socket: Path) -> None:
        self.tmux = tmux
        self.socket = socket

    def _run(self, *args: str) -> str:
        cmd = [self.tmux, "-S", str(self.socket), "-f", "/dev/null", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def start(self, command: str, cwd: Path, width: int, height: int) -> None:
        # After the command, the shell reports its exit status and the terminal's modes, then
        # waits: what is on screen then shows how the command left the terminal.
        after = (
            'echo "exit=$?"; stty -a | tr " ;" "\\n\\n" | grep -xE -- "-?(echo|icanon)" '
            '| tr "\\n" " "; echo "<modes"; sleep 600'
        )
        self._run(
            *("new-session", "-d", "-x", str(width), "-y", str(height), "-c", str(cwd)),
            f"{command}; {after}",
        )

    def exited(self, timeout: float) -> tuple[int, set[str]]:
        """(exit status, terminal modes) once the command has exited."""
        screen = self.wait_screen(lambda s: "<modes" in s, timeout, "the command to exit")
        status = int(re.findall(r"^exit=(\d+)$", screen, re.MULTILINE)[-1])
        modes = re.findall(r"^(.*)<modes$", screen, re.MULTILINE)[-1].split()
        return status, set(modes)

    def keys(self, *keys: str) -> None:
        self._run("send-keys", "-t", "0", *keys)

    def screen(self, escapes: bool = False) -> str:
        return self._run("capture-pane", "-p", "-t", "0", *(["-e"] if escapes else []))

    def show(self, fmt: str) -> str:
        return self._run("display-message", "-p", "-t", "0", fmt).strip()

    def wait_screen(self, predicate: object, timeout: float, what: str) -> str:
        found: list[str] = []

        def check() -> bool:
            text = self.screen()
            found[:] = [text]
            return bool(predicate(text))  # type: ignore[operator]

        try:
            wait_for(check, timeout, what)
        except pytest.fail.Exception:
            print(found[0] if found else "(no capture)")
            raise
        return found[0]

    def close(self) -> None:
        subprocess.run([self.tmux, "-S", str(self.socket), "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(require_tmux(), tmp_path / "tmux.sock")
    try:
        yield term
    finally:
        term.close()


def _top(*env: str) -> str:
    # The pane's environment is the tmux server's (ours); NO_COLOR is set for the whole suite.
    prefix = " ".join(["env", "-u", "NO_COLOR", *env])
    return f"{prefix} {shlex.quote(sys.executable)} -m supervisor top --interval 0.5"


_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _colours(ansi: str) -> set[str]:
    """Foreground/background colours used on screen, as '5;N' or '2;R;G;B'."""
    found = set()
    for params in _SGR.findall(ansi):
        parts = params.split(";")
        i = 0
        while i < len(parts):
            if parts[i] in ("38", "48") and i + 1 < len(parts):
                size = 3 if parts[i + 1] == "5" else 5
                found.add(";".join(parts[i + 1 : i + size]))
                i += size
            else:
                if parts[i] and (30 <= int(parts[i]) <= 37 or 90 <= int(parts[i]) <= 97):
                    found.add(f"basic;{parts[i]}")
                i += 1
    return found


def _grey(colour: str) -> bool:
    kind, *values = colour.split(";")
    if kind == "5":
        return int(values[0]) >= 232 or int(values[0]) in (0, 7, 8, 15)
    if kind == "2":
        return len(set(values)) == 1
    return False


def test_top_shows_the_instances_and_scales_on_a_key(tmp_path: Path, terminal: Terminal) -> None:
    with detached_stack(tmp_path) as project, traffic(proxy_address(project)):
        rows = ps(project)
        terminal.start(_top("COLORTERM=truecolor"), project, 160, 36)
        screen = terminal.wait_screen(
            lambda s: all(str(r["pid"]) in s for r in rows) and "REQ/S" in s,
            30,
            "corral top listing every instance with its pid",
        )
        for r in rows:
            assert re.search(rf"{re.escape(r['name'])}\s+● (ready|running)\s+{r['pid']}", screen)
        assert "▾ api" in screen and "3/3 up" in screen

        terminal.keys("+")  # the cursor starts on the first service: api
        wait_for(lambda: len([r for r in ps(project) if r["service"] == "api"]) == 4, 30, "api=4")
        terminal.wait_screen(lambda s: "api.4" in s and "4/4 up" in s, 30, "api.4 on screen")
        terminal.keys("-")
        wait_for(lambda: len([r for r in ps(project) if r["service"] == "api"]) == 3, 30, "api=3")
        terminal.wait_screen(lambda s: "api.4" not in s, 30, "api.4 gone from the screen")

        terminal.keys("l")  # follow api's logs in the lower pane
        terminal.wait_screen(
            lambda s: "logs · api" in s and re.search(r"api\.4 .*stopped", s),
            30,
            "api's logs in the pane, up to the scale-down",
        )
        if want_screenshots():
            time.sleep(45)  # a fuller minute of sparkline for the docs (not a wait for state)
        ansi = terminal.screen(escapes=True)
        colours = _colours(ansi)
        assert any(not _grey(c) for c in colours), colours  # colour when NO_COLOR is unset

        terminal.keys("q")
        # Back to a normal terminal: main screen, echo and line editing on, the view gone.
        assert terminal.exited(15) == (0, {"echo", "icanon"})
        assert terminal.show("#{alternate_on}") == "0"
        assert "REQ/S" not in terminal.screen()
    try:
        require_browser()
    except pytest.skip.Exception:
        return  # the terminal was tested; only the PNG needs Chromium
    path = screenshot_path(tmp_path, "top.png")
    terminal_png(ansi, 160, path, "corral top")
    assert path.stat().st_size > 10_000


def test_no_color_narrow_terminal_and_ctrl_c(tmp_path: Path, terminal: Terminal) -> None:
    with detached_stack(tmp_path) as project:
        terminal.start(_top("NO_COLOR=1"), project, 56, 20)
        screen = terminal.wait_screen(lambda s: "worker.1" in s, 30, "corral top on screen")
        header = next(line for line in screen.splitlines() if "NAME" in line)
        assert header.split() == ["NAME", "STATE", "CPU%", "MEM", "REQ/S", "P99"]
        assert "● ready" in screen  # the state reads without colour
        colours = _colours(terminal.screen(escapes=True))
        assert colours and all(_grey(c) for c in colours), colours
        terminal.keys("C-c")
        assert terminal.exited(15) == (0, {"echo", "icanon"})
        assert terminal.show("#{alternate_on}") == "0"


def test_without_a_daemon_or_a_terminal_top_says_why(tmp_path: Path, terminal: Terminal) -> None:
    (tmp_path / "corral.toml").write_text('[services.a]\ncommand = "true"\nvenv = false\n')
    terminal.start(_top(), tmp_path, 100, 10)
    assert terminal.exited(15)[0] == 1
    assert "corral: no corral daemon is running" in terminal.screen()
    piped = subprocess.run(
        [sys.executable, "-m", "supervisor", "top"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.returncode == 1
    assert piped.stderr.startswith("corral: corral top needs a terminal")
