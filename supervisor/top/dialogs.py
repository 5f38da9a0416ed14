"""The two questions `corral top` asks: confirm a stop, and how many instances to run."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

_CSS = """
{name} {
    align: center middle;
}
{name} > Vertical {
    width: auto;
    min-width: 40;
    max-width: 72;
    height: auto;
    border: round $warning;
    background: $panel;
    padding: 1 2;
}
{name} Label.hint {
    color: $text-muted;
    margin-top: 1;
}
"""


class ConfirmStop(ModalScreen[bool]):
    """y stops, anything else keeps it running: a stop takes the service out of service."""

    DEFAULT_CSS = _CSS.replace("{name}", "ConfirmStop")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Stop", show=False),
        Binding("n,escape,q", "answer(False)", "Keep", show=False),
    ]

    def __init__(self, target: str, count: int) -> None:
        super().__init__()
        self.target = target
        self.count = count

    def compose(self) -> ComposeResult:
        what = f"{self.count} instance{'s' if self.count != 1 else ''}"
        with Vertical():
            yield Label(f"Stop [b]{self.target}[/b] ({what})?")
            yield Label("y stop   n / Esc keep running", classes="hint")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ScaleTo(ModalScreen[int | None]):
    """A count typed in: Enter scales, Esc cancels."""

    DEFAULT_CSS = _CSS.replace("{name}", "ScaleTo").replace("$warning", "$accent")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, service: str, current: int) -> None:
        super().__init__()
        self.service = service
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Instances of [b]{self.service}[/b] (now {self.current}):")
            yield Input(str(self.current), type="integer", id="count", select_on_focus=True)
            yield Label("Enter scale   Esc cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value.isdigit():
            self.notify("expected a whole number >= 0", severity="error")
            return
        self.dismiss(int(value))

    def action_cancel(self) -> None:
        self.dismiss(None)
