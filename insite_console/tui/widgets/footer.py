"""The footer, with what to drop on a narrow terminal chosen instead of cut off on the right.

Textual's Footer lays out every shown binding and clips what does not fit, so at 60 columns
the last keys (`? Help`, `q Quit`) vanished. This one keeps, in this order of value: quit and
help, the keys of the screen itself, the command palette key, the keys of the other screens,
then the rest; the key of the screen already shown goes first (its title says where you are).
"""

from __future__ import annotations

from rich.cells import cell_len
from textual.widgets import Footer

from insite_console.tui import commands
from insite_console.tui.widgets.fit import fit

ESSENTIAL = {"quit", "help"}
SCREEN_KEYS = {"show_dashboard": "dashboard", "show_catalog": "catalog", "show_jobs": "jobs",
               "show_restore": "restore", "show_drills": "drills", "show_history": "history"}


class InsiteFooter(Footer):
    def __init__(self) -> None:
        super().__init__(compact=True)
        self._width = 0

    def _priority(self, binding) -> int:
        if binding.action in ESSENTIAL:
            return 0
        if binding.action in SCREEN_KEYS:
            return 9 if SCREEN_KEYS[binding.action] == getattr(self.screen, "SCOPE", "app") else 3
        if binding.action == "command_palette":
            return 2
        command = commands.BY_ID.get(binding.id or "")
        return 1 if command is not None and command.scope != "app" else 4

    def compose(self):
        keys = list(super().compose())
        width = self.app.size.width
        self._width = width
        if not keys or not width:
            yield from keys
            return
        binding_of = {}
        for _node, binding, _enabled, _tooltip in self.screen.active_bindings.values():
            binding_of.setdefault(binding.action, binding)
        widths, priorities = [], []
        for key in keys:
            # compact: "KEY LABEL" and one column of margin; the palette key has a border instead
            widths.append(cell_len(key.key_display) + 1 + cell_len(key.description) + 1)
            binding = binding_of.get(key.action)
            priorities.append(self._priority(binding) if binding is not None else 5)
        kept = fit(keys, widths, priorities, width - 1)
        yield from (key for key in keys if key in kept)

    def on_resize(self) -> None:
        if self.app.size.width != self._width and self.is_attached:
            self.call_after_refresh(self.recompose)
