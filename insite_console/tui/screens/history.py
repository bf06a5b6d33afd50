"""Restore history and audit: every restore, platform recovery and DR drill (audit.history),
newest first, with who ran it, what, where, the outcome, how long and why."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import DataTable, Header, Static

from insite_console import audit, clock
from insite_console.errors import InsiteError
from insite_console.tui import commands, model
from insite_console.tui.screens.base import InsiteScreen, selected_key
from insite_console.tui.widgets.fit import Col, fill_table
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.styles import role_style


# what an auditor reads first is kept longest; a narrow terminal drops the rest whole (the
# selected entry is shown in full below)
HISTORY_COLUMNS = [
    Col("status", "Outcome"), Col("started", "Started (UTC)"), Col("who", "Who", 1), Col("why", "Why", 2, max_width=30, min_width=12),
    Col("kind", "Kind", 3), Col("duration", "Took", 4), Col("where", "Where", 5, max_width=32),
    Col("what", "What", 6, max_width=40, min_width=12),
]


class HistoryScreen(InsiteScreen):
    SCOPE = "history"
    BINDINGS = commands.bindings("history")

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Vertical(id="history"):
            with Vertical(id="history-box", classes="box") as box:
                box.border_title = "Restores, recoveries and drills"
                yield DataTable(id="history-table", cursor_type="row")
            with Vertical(id="history-detail", classes="box") as box:
                box.border_title = "Selected"
                yield Static(id="history-facts")
        yield InsiteFooter()

    def on_mount(self) -> None:
        table = self.query_one("#history-table", DataTable)
        self.watch(self.app, "catalog_version", lambda _: self.refresh_history() if self.is_active else None,
                   init=False)
        self.refresh_history()
        table.focus()

    def on_screen_resume(self) -> None:
        self.refresh_history()

    def on_resize(self) -> None:
        self.refresh_history()  # what the table drops on a narrow terminal depends on the width

    def refresh_history(self) -> None:
        table = self.query_one("#history-table", DataTable)
        selected = selected_key(table)
        try:
            entries = audit.history(self.app.workspace)
        except InsiteError as exc:
            self.query_one("#history-facts", Static).update(f"[$error]✗ the history cannot be read: {escape(str(exc))}[/]")
            return
        self.entries = {f"{e['kind']}:{e['id']}": e for e in entries}
        rows = []
        for key, e in self.entries.items():
            label, role = model.status_label(e["status"])
            duration = "—" if e["duration_seconds"] is None else clock.human_duration(e["duration_seconds"])
            rows.append((key, {
                "status": Text(label, style=role_style(self.app, role)), "started": model.short_time(e["started_at"]),
                "who": f"{e['user']}@{e['host'] or '?'}" if e["user"] else "unrecorded", "why": e["reason"] or "—",
                "kind": e["kind"], "duration": duration,
                "where": ("▲ " if e["over_source"] else "") + (e["target"] or "—"), "what": audit.what_text(e),
            }))
        fill_table(table, HISTORY_COLUMNS, rows, self.size.width - 4)  # the box: border and padding
        if self.entries:
            keys = list(self.entries)
            table.move_cursor(row=keys.index(selected) if selected in keys else 0)
        self.show_selected()

    @on(DataTable.RowHighlighted, "#history-table")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_selected()

    def show_selected(self) -> None:
        facts = self.query_one("#history-facts", Static)
        key = selected_key(self.query_one("#history-table", DataTable))
        e = self.entries.get(key) if key else None
        if e is None:
            facts.update("No restores, recoveries or drills recorded yet. A restore (key 4), a platform recovery "
                         "(`insite-console recover`) or a drill (key 5) is listed here with who ran it and why.")
            return
        label, role = model.status_label(e["status"])
        duration = "unknown" if e["duration_seconds"] is None else clock.human_duration(e["duration_seconds"])
        lines = [
            f"[${role}][b]{escape(label)}[/][/] {escape(e['kind'])} {escape(e['id'])} · started "
            f"{escape(e['started_at'])} · took {escape(duration)}",
            f"Who: [b]{escape(audit.who_text(e))}[/]",
            f"What: {escape(audit.what_text(e))}",
            f"Where: {escape(e['target'] or '—')}"
            + (" [$warning]▲ over production[/]" if e["over_source"] else ""),
            "Why: " + (f"[b]{escape(e['reason'])}[/]" if e["reason"] else "[dim]no reason recorded[/]"),
        ]
        if e["bytes_written"]:
            lines.append(f"Written: {model.size_text(e['bytes_written'])}"
                         + (f" · {e['files']:,} files" if e["files"] else ""))
        if e["error"]:
            lines.append(f"[$error]✗ {escape(e['error'])}[/]")
        facts.update("\n".join(lines))
