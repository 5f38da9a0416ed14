"""`corral top`'s screen driven headless by Textual's Pilot, against a real daemon.

Every key is checked by what the daemon did (the same request the CLI sends), not by what
the screen claims.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Log, Static

from supervisor.daemon import Daemon
from supervisor.top.app import TopApp
from supervisor.top.dialogs import ConfirmStop, ScaleTo

from .conftest import running_daemon, wait_until, web_service, write_config

STACK = (
    'project = "shop"\n[proxy]\nlisten = "127.0.0.1:0"\n'
    + web_service("web", instances=2)
    + f"""
[services.worker]
command = ["{sys.executable}", "-c", "import time\\nwhile True: print('tick', flush=True); time.sleep(0.2)"]
venv = false
stop_timeout = "1s"
"""
)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(write_config(tmp_path, STACK)) as d:
        await wait_until(lambda: all(r["state"] in ("ready", "running") for r in d.ps()), 20)
        yield d


def _app(daemon: Daemon, tmp_path: Path) -> TopApp:
    # A wide debounce: on a loaded machine two key presses can be further apart than 0.3 s.
    return TopApp(daemon.plan.daemon.socket, interval=0.25, save_dir=tmp_path, scale_debounce=2.0)


def _targets(app: TopApp) -> list[str]:
    return [r.target for r in app._rows]


def _cell(app: TopApp, key: str, column: str) -> str:
    return str(app.query_one("#fleet", DataTable).get_cell(key, column))


def _saved(where: Path) -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(where.glob("corral-*.log"))]


async def _select(app: TopApp, target: str) -> None:
    table = app.query_one("#fleet", DataTable)
    table.move_cursor(row=_targets(app).index(target))
    await wait_until(lambda: app.selected() is not None and app.selected().target == target, 5)  # type: ignore[union-attr]


async def _shown(app: TopApp, targets: list[str]) -> None:
    await wait_until(lambda: _targets(app) == targets, 20, f"top to show {targets}")


async def test_shows_every_instance_with_its_figures(daemon: Daemon, tmp_path: Path) -> None:
    app = _app(daemon, tmp_path)
    async with app.run_test(size=(160, 30)):
        await _shown(app, ["web", "web.1", "web.2", "worker", "worker.1"])
        rows = {r["name"]: r for r in daemon.ps()}
        for row in app._rows[1:3]:
            assert _cell(app, row.key, "pid") == str(rows[row.target]["pid"])
            assert _cell(app, row.key, "port") == str(rows[row.target]["port"])
            assert _cell(app, row.key, "state") == "● ready"
        assert _cell(app, "svc:web", "state") == "2/2 up"
        assert _cell(app, "svc:worker", "trend") == "not proxied"
        title = str(app.query_one("#title", Static).render())
        assert "shop" in title and "3/3 up" in title
        assert [c.key for c in app._columns][-1] == "detail"  # wide: every column


async def test_plus_and_minus_scale_the_selected_service_in_one_order(
    daemon: Daemon, tmp_path: Path
) -> None:
    app = _app(daemon, tmp_path)
    async with app.run_test(size=(160, 30)) as pilot:
        await _shown(app, ["web", "web.1", "web.2", "worker", "worker.1"])
        await _select(app, "web.1")  # an instance row scales its service
        await pilot.press("plus", "plus")
        await wait_until(lambda: daemon.services["web"].desired == 4, 10, "web scaled to 4")
        await _shown(app, ["web", "web.1", "web.2", "web.3", "web.4", "worker", "worker.1"])
        # Two presses in a row are one `scale web=4`, not 3 then 4.
        assert [e.new for e in daemon.events.recent() if e.kind == "scale"] == ["4"]
        assert app.selected().target == "web.1"  # type: ignore[union-attr]  # the cursor stayed
        await pilot.press("minus", "minus", "minus")
        await wait_until(lambda: daemon.services["web"].desired == 1, 10, "web scaled to 1")
        await _shown(app, ["web", "web.1", "worker", "worker.1"])
        await wait_until(lambda: "scaled to 1" in _cell(app, "svc:web", "detail"), 5)


async def test_n_asks_for_a_count(daemon: Daemon, tmp_path: Path) -> None:
    app = _app(daemon, tmp_path)
    async with app.run_test(size=(160, 30)) as pilot:
        await _shown(app, ["web", "web.1", "web.2", "worker", "worker.1"])
        await _select(app, "worker")
        await pilot.press("n")
        await wait_until(lambda: isinstance(app.screen, ScaleTo), 5)
        await pilot.press("3", "enter")  # the field starts selected: typing replaces it
        await wait_until(lambda: daemon.services["worker"].desired == 3, 10, "worker scaled to 3")
        await pilot.press("n")
        await wait_until(lambda: isinstance(app.screen, ScaleTo), 5)
        seen = app.snapshot["ts"]  # type: ignore[index]
        # The feed keeps updating the table under an open dialog, and nothing breaks.
        await wait_until(lambda: app.snapshot["ts"] > seen + 0.5, 10)  # type: ignore[index]
        assert app.is_running
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, ScaleTo), 5)
        assert daemon.services["worker"].desired == 3


async def test_restart_stop_and_start_act_on_the_selected_row(
    daemon: Daemon, tmp_path: Path
) -> None:
    app = _app(daemon, tmp_path)
    async with app.run_test(size=(160, 30)) as pilot:
        await _shown(app, ["web", "web.1", "web.2", "worker", "worker.1"])
        before = {r["name"]: r["pid"] for r in daemon.ps()}

        await _select(app, "web.2")
        await pilot.press("r")  # one instance: a rolling restart of web.2 alone

        def restarted() -> bool:
            now = {r["name"]: r for r in daemon.ps() if not r["retiring"] and not r["incoming"]}
            return now["web.2"]["pid"] != before["web.2"] and now["web.2"]["state"] == "ready"

        await wait_until(restarted, 20, "web.2 restarted")
        assert {r["name"]: r["pid"] for r in daemon.ps()}["web.1"] == before["web.1"]

        await _select(app, "worker")
        await pilot.press("x")
        await wait_until(lambda: isinstance(app.screen, ConfirmStop), 5)
        await pilot.press("n")  # keep it running
        await wait_until(lambda: not isinstance(app.screen, ConfirmStop), 5)
        assert daemon.services["worker"].instances[1].state.value == "running"
        await pilot.press("x")
        await wait_until(lambda: isinstance(app.screen, ConfirmStop), 5)
        await pilot.press("y")
        await wait_until(
            lambda: daemon.services["worker"].instances[1].state.value == "stopped", 10
        )
        await wait_until(lambda: _cell(app, app._rows[-1].key, "state") == "○ stopped", 10)
        await pilot.press("s")
        await wait_until(
            lambda: daemon.services["worker"].instances[1].state.value == "running", 10
        )


async def test_logs_follow_the_selected_service_and_can_be_saved_and_copied(
    daemon: Daemon, tmp_path: Path
) -> None:
    app = _app(daemon, tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await _shown(app, ["web", "web.1", "web.2", "worker", "worker.1"])
        await pilot.press("w")  # nothing shown yet: a warning, no file
        assert _saved(tmp_path) == []
        await _select(app, "worker.1")
        await pilot.press("l")
        pane = app.query_one("#logs", Log)
        await wait_until(lambda: pane.display and sum("tick" in x for x in pane.lines) >= 3, 15)
        assert all(line.startswith("worker.1 ") for line in pane.lines)
        assert "logs · worker" in str(pane.border_title)

        await pilot.press("w")
        await wait_until(lambda: len(_saved(tmp_path)) == 1, 5)
        name, text = _saved(tmp_path)[0]
        assert name.startswith("corral-worker-")
        saved = text.splitlines()
        assert saved and all(line.startswith("worker.1 ") for line in saved)
        assert "tick" in saved[-1]

        await pilot.press("c")
        assert app.clipboard.splitlines()[0] == saved[0]  # sent to the terminal as OSC 52

        await _select(app, "web")
        await pilot.press("l")  # another service: the pane switches to it
        await wait_until(lambda: any("listening on" in x for x in pane.lines), 10)
        assert not any("tick" in x for x in pane.lines)
        await pilot.press("l")  # the same one again: hidden
        await wait_until(lambda: not pane.has_class("shown"), 5)


async def test_narrow_terminal_keeps_the_essential_columns(daemon: Daemon, tmp_path: Path) -> None:
    app = _app(daemon, tmp_path)
    async with app.run_test(size=(50, 20)) as pilot:
        await _shown(app, ["web", "web.1", "web.2", "worker", "worker.1"])
        assert [c.key for c in app._columns] == ["name", "state", "cpu", "mem", "rps"]
        await pilot.resize_terminal(150, 20)
        await wait_until(lambda: "detail" in [c.key for c in app._columns], 5)


async def test_q_quits_and_a_lost_daemon_is_shown_not_fatal(tmp_path: Path) -> None:
    async with running_daemon(write_config(tmp_path, STACK)) as d:
        app = TopApp(d.plan.daemon.socket, interval=0.25, save_dir=tmp_path)
        async with app.run_test(size=(120, 20)) as pilot:
            await wait_until(lambda: len(app._rows) == 5, 20)
            d.shutdown_requested.set()
            title = app.query_one("#title", Static)
            await wait_until(lambda: "disconnected" in str(title.render()), 30)
            await pilot.press("q")
            await wait_until(lambda: not app.is_running, 5)
