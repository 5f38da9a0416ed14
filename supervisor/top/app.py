"""The `corral top` screen: fleet table, selected service's traffic, a log pane, key actions."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Log, Static

from ..errors import ControlError
from . import cells
from .cells import Column, Row
from .client import ControlClient
from .dialogs import ConfirmStop, ScaleTo

# Presses of + / - within this long become one scale order (like typing `corral scale web=5`).
_SCALE_DEBOUNCE = 0.3
_LOG_HISTORY = 200
_LOG_MAX_LINES = 5000


class TopApp(App[None]):
    """Live fleet view; every key sends the request the matching CLI command sends."""

    TITLE = "corral top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $panel; }
    #fleet { height: 1fr; }
    #fleet > .datatable--header { text-style: bold; color: $text-muted; }
    #detail { height: 1; background: $panel; }
    #logs { height: 45%; border-top: solid $accent; display: none; }
    #logs.shown { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "restart", "Restart"),
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("plus", "scale(1)", "+1", key_display="+"),
        Binding("minus", "scale(-1)", "-1", key_display="-"),
        Binding("n", "scale_to", "Scale to N"),
        Binding("l", "toggle_logs", "Logs"),
        Binding("w", "save_logs", "Save logs"),
        Binding("c", "copy_logs", "Copy logs"),
        Binding("q", "quit", "Quit"),
        # Ctrl+C copies a mouse selection (the screen's binding) and quits otherwise.
        Binding("ctrl+c", "quit", "Quit", show=False),
    ]

    def __init__(
        self,
        socket: Path,
        *,
        interval: float = 1.0,
        save_dir: Path | None = None,
        scale_debounce: float = _SCALE_DEBOUNCE,
    ) -> None:
        super().__init__()
        self.scale_debounce = scale_debounce
        self.client = ControlClient(socket)
        self.interval = interval
        self.save_dir = save_dir or Path.cwd()
        self.snapshot: dict[str, Any] | None = None
        self.connected = True
        self.last_scale: dict[str, dict[str, Any]] = {}  # service → its latest "scale" event
        self.log_service: str | None = None
        self._rows: list[Row] = []
        self._columns: list[Column] = []
        self._pending_scale: dict[str, int] = {}
        self._scale_timers: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        # Kept, not queried: a worker may deliver one more frame while the screen tears down.
        self.title_bar = Static(id="title")
        self.table: DataTable[Text] = DataTable(id="fleet", cursor_type="row", zebra_stripes=False)
        self.detail_bar = Static(id="detail")
        self.pane = Log(id="logs", max_lines=_LOG_MAX_LINES, highlight=False)
        yield self.title_bar
        yield self.table
        yield self.detail_bar
        yield self.pane
        yield Footer()

    def on_mount(self) -> None:
        self.table.focus()
        self._show_title()
        # SIGTERM (kill, a closing tmux or SSH session manager) exits like q: terminal restored.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit)
        self.follow_stats()

    async def on_unmount(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        await self.client.close()

    # --- the feed ----------------------------------------------------------------------------------

    @work(exclusive=True, group="stats")
    async def follow_stats(self) -> None:
        delay = 0.5
        while True:
            try:
                async for kind, data in self.client.stats(self.interval):
                    if kind == "stats":
                        self.snapshot, self.connected, delay = data, True, 0.5
                        self.refresh_fleet()
                    elif kind == "event" and data.get("kind") == "scale":
                        self.last_scale[data["service"]] = data
            except ControlError:
                pass
            self.connected = False  # the stream ended: daemon gone or shutting down
            self._show_title()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def on_resize(self) -> None:
        if self.snapshot is not None:
            self.refresh_fleet()

    def refresh_fleet(self) -> None:
        """Bring the table up to date, keeping the cursor on the same row."""
        if self.snapshot is None:
            return
        table = self.table
        columns = cells.columns_for(self.size.width, cells.has_retry(self.snapshot))
        rows = cells.rows(self.snapshot, self.last_scale)
        selected = self.selected()
        if [c.key for c in columns] != [c.key for c in self._columns]:
            table.clear(columns=True)
            for col in columns:
                table.add_column(
                    Text(col.label, justify="right" if col.right else "left"), key=col.key
                )
            self._columns, self._rows = columns, []
        if [r.key for r in rows] != [r.key for r in self._rows]:
            table.clear()
            for row in rows:
                table.add_row(*(self._cell(row, col) for col in columns), key=row.key)
            table.move_cursor(row=_cursor_for(selected, rows, table.cursor_row), animate=False)
        else:
            for row, old in zip(rows, self._rows, strict=True):
                for col in columns:
                    if row.cells[col.key] != old.cells[col.key]:
                        table.update_cell(row.key, col.key, self._cell(row, col), update_width=True)
        self._rows = rows
        self._show_title()
        self._show_detail()

    @staticmethod
    def _cell(row: Row, col: Column) -> Text:
        text = row.cells[col.key].copy()
        text.justify = "right" if col.right else "left"
        return text

    def _show_title(self) -> None:
        self.title_bar.update(cells.title(self.snapshot, self.connected))

    def _show_detail(self) -> None:
        row = self.selected()
        svc = self._service(row.service) if row else None
        text = cells.detail(svc, self.size.width)
        if svc is not None and svc["name"] in self._pending_scale:
            text.append(f"   scaling to {self._pending_scale[svc['name']]}…", style="bold yellow")
        self.detail_bar.update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    # --- what is selected ----------------------------------------------------------------------

    def selected(self) -> Row | None:
        table = self.table
        if not self._rows or not 0 <= table.cursor_row < len(self._rows):
            return None
        return self._rows[table.cursor_row]

    def _service(self, name: str) -> dict[str, Any] | None:
        for svc in (self.snapshot or {}).get("services", []):
            if svc["name"] == name:
                return dict(svc)
        return None

    # --- orders: the same requests as the CLI's ---------------------------------------------------

    @work(group="orders")
    async def order(self, label: str, path: str, body: Mapping[str, Any]) -> None:
        # The table shows the order under way; a note says when it is done, or why not.
        try:
            await self.client.call("POST", path, body)
        except ControlError as exc:
            self.notify(f"{label} failed: {exc}", severity="error", timeout=8)
        else:
            self.notify(f"{label}: done", timeout=2.5)

    def action_restart(self) -> None:
        if row := self.selected():
            self.order(f"restart {row.target}", "/v1/restart", {"targets": [row.target]})

    def action_start(self) -> None:
        if row := self.selected():
            self.order(f"start {row.target}", "/v1/start", {"targets": [row.target]})

    def action_stop(self) -> None:
        row = self.selected()
        if row is None:
            return
        svc = self._service(row.service) or {}
        count = 1 if row.target != row.service else int(svc.get("total", 0))

        def answered(yes: bool | None) -> None:
            if yes:
                self.order(f"stop {row.target}", "/v1/stop", {"targets": [row.target]})

        self.push_screen(ConfirmStop(row.target, count), answered)

    def action_scale(self, delta: int) -> None:
        row = self.selected()
        svc = self._service(row.service) if row else None
        if row is None or svc is None:
            return
        base = self._pending_scale.get(row.service, int(svc.get("desired", 0)))
        self._pending_scale[row.service] = max(0, base + delta)
        timer = self._scale_timers.pop(row.service, None)
        if timer is not None:
            timer.stop()
        self._scale_timers[row.service] = self.set_timer(
            self.scale_debounce, lambda: self._send_scale(row.service)
        )
        self._show_detail()

    def _send_scale(self, service: str) -> None:
        self._scale_timers.pop(service, None)
        count = self._pending_scale.pop(service, None)
        if count is not None:
            self.order(f"scale {service}={count}", "/v1/scale", {"counts": {service: count}})
        self._show_detail()

    def action_scale_to(self) -> None:
        row = self.selected()
        svc = self._service(row.service) if row else None
        if row is None or svc is None:
            return

        def answered(count: int | None) -> None:
            if count is not None:
                self.order(
                    f"scale {row.service}={count}", "/v1/scale", {"counts": {row.service: count}}
                )

        self.push_screen(ScaleTo(row.service, int(svc.get("desired", 0))), answered)

    # --- logs ------------------------------------------------------------------------------------

    def action_toggle_logs(self) -> None:
        row = self.selected()
        pane = self.pane
        if row is None:
            return
        if pane.has_class("shown") and self.log_service == row.service:
            pane.remove_class("shown")
            self.log_service = None
            self.workers.cancel_group(self, "logs")
            return
        self.log_service = row.service
        pane.clear()
        pane.border_title = f"logs · {row.service} · drag to select, Ctrl+C copies · w saves"
        pane.add_class("shown")
        self.follow_logs(row.service)

    @work(exclusive=True, group="logs")
    async def follow_logs(self, service: str) -> None:
        pane = self.pane
        lines = _LOG_HISTORY
        while True:
            try:
                async for rec in self.client.logs(service, lines):
                    pane.write_line(_log_line(rec))
            except ControlError as exc:
                pane.write_line(f"[corral top] {exc}; retrying")
            lines = 0  # after a reconnect, only what is new
            await asyncio.sleep(1.0)

    def _log_text(self) -> str | None:
        pane = self.pane
        if not pane.has_class("shown") or not pane.lines:
            self.notify("no logs shown: press l on a service first", severity="warning")
            return None
        return "\n".join(pane.lines) + "\n"

    def action_save_logs(self) -> None:
        text = self._log_text()
        if text is None:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.save_dir / f"corral-{self.log_service}-{stamp}.log"
        try:
            path.write_text(text)
        except OSError as exc:
            self.notify(f"cannot write {path}: {exc.strerror or exc}", severity="error")
            return
        self.notify(f"saved {text.count(chr(10))} lines to {path}", timeout=6)

    def action_copy_logs(self) -> None:
        text = self._log_text()
        if text is not None:
            # OSC 52: works over SSH and in tmux (set-clipboard on) for most terminals.
            self.copy_to_clipboard(text)
            self.notify(f"copied {text.count(chr(10))} lines to the clipboard", timeout=4)


def _log_line(rec: Mapping[str, Any]) -> str:
    index = rec.get("index")
    name = f"{rec['service']}.{index}" if index else str(rec["service"])
    line = str(rec.get("line", ""))
    if rec.get("stream") == "corral":
        line = f"[corral] {line}"
    return f"{name:<10} {line}"


def _cursor_for(selected: Row | None, rows: list[Row], fallback: int) -> int:
    """Where the cursor goes after rows changed: same row, same target, same service, or near."""
    if selected is not None:
        for attr, want in (
            ("key", selected.key),
            ("target", selected.target),
            ("key", f"svc:{selected.service}"),
        ):
            for i, row in enumerate(rows):
                if getattr(row, attr) == want:
                    return i
    return max(0, min(fallback, len(rows) - 1))
