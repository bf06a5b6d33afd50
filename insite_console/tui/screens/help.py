"""Help: every key of every screen, generated from the command table (tui/commands.py)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Header, Static

from insite_console.tui import commands
from insite_console.tui.screens.base import InsiteScreen
from insite_console.tui.widgets.footer import InsiteFooter

INTRO = """[b]insite-console[/]: backups, restores and their health, from a terminal.

Status is always shown as a symbol and a word: [$success]✓ ok[/]  [$warning]▲ near RPO[/]  \
[$error]✗ failed / RPO breach[/]  [$primary]▶ running[/]  [$warning]■ cancelled[/].
Destructive actions ask first; [b]Esc[/] and the first button always mean No.
[b]ctrl+p[/] opens the command palette: every action, every policy, and backups by id or name.
"""


class HelpScreen(InsiteScreen):
    SCOPE = "help"
    BINDINGS = commands.bindings("help")

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with VerticalScroll(id="help"):
            yield Static(INTRO, id="help-intro")
            yield Static(self.keys_markup(), id="help-keys")
        yield InsiteFooter()

    def keys_markup(self) -> str:
        lines = []
        current = None
        for scope, key, label, text in commands.help_rows(read_only=self.app.read_only):
            if scope != current:
                lines.append(f"\n[b $accent]{escape(scope)}[/]")
                current = scope
            lines.append(f"  [b]{escape(key):>7}[/]  {escape(label):<11} {escape(text)}")
        if self.app.read_only:
            lines.append("\n[$warning]Read-only mode:[/] backup, verify, restore, forget and cancel are hidden.")
        return "\n".join(lines).lstrip("\n")

    def action_close(self) -> None:
        self.app.pop_screen()

    def action_back(self) -> None:
        self.app.pop_screen()
