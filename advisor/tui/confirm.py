"""A yes/no question in a modal dialog, shown before quitting while a bench runs."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static



class Confirm(ModalScreen[bool]):
    """Ask `question`; dismiss with True for yes (y, or the first button), False for no (n, Escape)."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: 60; height: auto; padding: 1 2; border: thick $warning; background: $surface; }
    Confirm Horizontal { height: auto; margin-top: 1; }
    Confirm Button { margin-right: 2; }
    """

    def __init__(self, question: str, yes: str, no: str) -> None:
        super().__init__()
        self.question = question
        self.yes_label = yes
        self.no_label = no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="confirm-question")
            with Horizontal():
                yield Button(self.yes_label + " (y)", id="confirm-yes", variant="error", compact=True)
                yield Button(self.no_label + " (n)", id="confirm-no", variant="primary", compact=True)

    BINDINGS = [("y", "answer(True)", "yes"), ("n", "answer(False)", "no"), ("escape", "answer(False)", "no")]

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()  # Enter on the focused button keeps the run going

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

