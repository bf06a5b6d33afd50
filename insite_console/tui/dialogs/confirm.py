"""Modal dialogs. Esc and the first button always mean No / Cancel, and the first button has
the focus, so Enter never confirms a destructive action by accident."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


ARROWS = [Binding("left", "move_focus(-1)", show=False), Binding("right", "move_focus(1)", show=False),
          Binding("up", "move_focus(-1)", show=False), Binding("down", "move_focus(1)", show=False)]


class ArrowButtons:
    """Arrow keys move between a dialog's buttons (a focused text field keeps its own arrows);
    the focus stops at the first and the last button rather than wrapping round to Yes."""

    def action_move_focus(self, delta: int) -> None:
        buttons = [b for b in self.query("#dialog-buttons Button") if b.display]
        focused = self.focused
        if focused not in buttons:
            return
        index = max(0, min(len(buttons) - 1, buttons.index(focused) + delta))
        buttons[index].focus()


class ConfirmDialog(ArrowButtons, ModalScreen[bool]):
    """Yes/No. Dismisses with True only when the second button is pressed."""

    BINDINGS = [Binding("escape", "no", "No", id="dialog_no"), *ARROWS]
    SCOPE = "dialog"

    def __init__(self, title: str, body: str, yes_label: str = "Yes", no_label: str = "No",
                 destructive: bool = True) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.body = body
        self.yes_label = yes_label
        self.no_label = no_label
        self.destructive = destructive

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog-box"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(self.no_label, id="no", variant="primary")
                yield Button(self.yes_label, id="yes", variant="error" if self.destructive else "default")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_no(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


class ChoiceDialog(ArrowButtons, ModalScreen[str | None]):
    """Pick one of several choices; the first button (and Esc) cancels with None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog_cancel"), *ARROWS]
    SCOPE = "dialog"

    def __init__(self, title: str, body: str, choices: list[tuple[str, str]], cancel_label: str = "Cancel") -> None:
        # buttons that would not fit side by side in an 80-column dialog go one under the other
        width = sum(len(label) + 6 for label in [cancel_label, *(label for _, label in choices)])
        super().__init__(classes="dialog many" if len(choices) > 3 or width > 64 else "dialog")
        self.title_text = title
        self.body = body
        self.choices = choices
        self.cancel_label = cancel_label

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog-box"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(self.cancel_label, id="cancel", variant="primary")
                for value, label in self.choices:
                    yield Button(label, id=f"choice-{value}", name=value)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None if event.button.id == "cancel" else event.button.name)


class MessageDialog(ModalScreen[None]):
    """An error or notice as a plain message (never a traceback)."""

    BINDINGS = [Binding("escape", "close", "Close", id="dialog_close")]
    SCOPE = "dialog"

    def __init__(self, title: str, body: str, error: bool = True) -> None:
        super().__init__(classes="dialog error" if error else "dialog")
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog-box"):
            yield Label(("✗ " if "error" in self.classes else "") + self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button("Close", id="close", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)


class TextDialog(ArrowButtons, ModalScreen[str | None]):
    """One line of text (a note, an inject): Enter or the second button gives it, Esc cancels
    with None. The field has the focus, so typing never reaches the screen's keys."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog_cancel"), *ARROWS]
    SCOPE = "dialog"

    def __init__(self, title: str, body: str, ok_label: str = "OK", placeholder: str = "",
                 required: bool = False) -> None:
        super().__init__(classes="dialog")
        self.title_text, self.body, self.ok_label = title, body, ok_label
        self.placeholder, self.required = placeholder, required

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog-box"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body", markup=False)
            yield Input(placeholder=self.placeholder, id="dialog-input")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel", variant="primary")
                yield Button(self.ok_label, id="ok")

    def on_mount(self) -> None:
        self.query_one("#dialog-input", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _give(self) -> None:
        text = self.query_one("#dialog-input", Input).value.strip()
        if self.required and not text:
            self.notify("type something first (Esc cancels)", severity="warning", timeout=3)
            return
        self.dismiss(text)

    @on(Input.Submitted, "#dialog-input")
    def submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._give()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self._give()
