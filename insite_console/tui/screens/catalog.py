"""The backup catalog: a virtual table (paged from SQLite), filter, sort, detail pane, actions."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.timer import Timer
from textual.widgets import Header, Input, Static

from insite_console.tui import commands
from insite_console.tui.screens.actions import BackupActions
from insite_console.tui.screens.base import InsiteScreen
from insite_console.tui.widgets.backup_detail import BackupDetail
from insite_console.tui.widgets.backup_table import SORTABLE, BackupTable
from insite_console.tui.widgets.footer import InsiteFooter


class CatalogScreen(BackupActions, InsiteScreen):
    SCOPE = "catalog"
    BINDINGS = commands.bindings("catalog")

    def __init__(self) -> None:
        super().__init__()
        self._filter_timer: Timer | None = None
        self._detail_timer: Timer | None = None
        self._ready = False
        self._pending_policy: tuple[str | None] | None = None

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Vertical(id="catalog"):
            yield Input(placeholder="filter: id, policy, source, type, status, storage  (enter: keep, esc: clear)",
                        id="filter", compact=True)
            yield Static(id="catalog-status")
            with Horizontal(id="catalog-body"):
                yield BackupTable(self.app.workspace.catalog, id="backups")
                yield BackupDetail(id="catalog-detail")
        yield InsiteFooter()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        table = self.query_one(BackupTable)
        if self._pending_policy is not None:
            table.policy = self._pending_policy[0]
        table.reload()
        table.focus()
        self._ready = True
        self.watch(self.app, "catalog_version", lambda _: self.catalog_changed() if self.is_active else None,
                   init=False)
        self.update_status()

    def on_screen_resume(self) -> None:
        if self._ready:
            self.catalog_changed()

    def on_resize(self) -> None:
        pane = self.query_one(BackupDetail)
        wide = self.size.width >= 110
        if wide and not pane.display and self._ready:
            pane.display = True
            pane.show(self.current_backup())  # it missed the highlights made while it was hidden
        pane.display = wide
        if self._ready:
            self.update_status()

    # ----- data -------------------------------------------------------------------------

    @property
    def table(self) -> BackupTable:
        return self.query_one(BackupTable)

    def current_backup(self) -> dict | None:
        return self.table.selected

    def catalog_changed(self) -> None:
        self.table.reload(keep_cursor=True)
        self.update_status()
        pane = self.query_one(BackupDetail)
        if pane.display:
            pane.refresh_verifications()  # a verify that just finished shows in the open pane

    def show_policy(self, policy: str | None) -> None:
        if not self._ready:  # called right after switch_mode: applied on mount
            self._pending_policy = (policy,)
            return
        self.table.set_query(self.table.search, policy)
        self.update_status()

    def update_status(self) -> None:
        table = self.table
        parts = [f"[b]{table.total:,}[/] backup(s)"]
        if table.policy:
            parts.append(f"policy [b]{escape(table.policy)}[/]")
        if table.search:
            parts.append(f"filter [b]{escape(table.search)}[/]")
        column = next((c.title for c in SORTABLE if c.sort == table.sort_column), table.sort_column)
        order = "▼ newest/largest first" if table.descending else "▲"
        hint = ["[dim]esc: show all[/]"] if table.policy or table.search else []
        # one line: on a narrow terminal the sort order keeps its arrow, then the hint goes
        status = self.query_one("#catalog-status", Static)
        for sort, extra in ((f"sorted by {escape(column)} {order}", hint), (f"sorted by {escape(column)} {order[0]}", hint),
                            (f"sorted by {escape(column)} {order[0]}", [])):
            text = " · ".join(parts + [sort] + extra)
            if Text.from_markup(text).cell_len <= self.size.width - 2:  # padding 0 1
                break
        status.update(text)

    @on(BackupTable.Highlighted)
    def highlighted(self, event: BackupTable.Highlighted) -> None:
        # Debounced: holding a key down must not read a manifest per row.
        if self._detail_timer is not None:
            self._detail_timer.stop()
        self._detail_timer = self.set_timer(0.15, lambda: self._show_detail(event.backup))
        self.refresh_bindings_if_changed("verify", "restore", "forget", "details")

    def _show_detail(self, backup: dict | None) -> None:
        pane = self.query_one(BackupDetail)
        if pane.display:
            pane.show(backup)

    @on(BackupTable.Selected)
    def selected(self, event: BackupTable.Selected) -> None:
        self.action_details()

    # ----- filter and sort -----------------------------------------------------------------

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.display = True
        field.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.2, lambda: self.apply_filter(event.value))

    def apply_filter(self, text: str) -> None:
        self.table.set_query(text.strip(), self.table.policy)
        self.update_status()

    @on(Input.Submitted, "#filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        self.apply_filter(event.value)
        if not event.value.strip():
            self.query_one("#filter", Input).display = False
        self.table.focus()

    def action_sort(self) -> None:
        names = [c.sort for c in SORTABLE]
        table = self.table
        index = names.index(table.sort_column) if table.sort_column in names else -1
        table.set_sort(names[(index + 1) % len(names)])
        self.update_status()

    def action_reverse(self) -> None:
        self.table.set_sort(self.table.sort_column, not self.table.descending)
        self.update_status()

    def action_back(self) -> None:
        field = self.query_one("#filter", Input)
        if field.has_focus or self.table.search or self.table.policy:
            field.value = ""
            field.display = False
            self.table.set_query("", None)
            self.update_status()
            self.table.focus()
            return
        self.app.switch_mode("dashboard")

    def action_details(self) -> None:
        from insite_console.tui.screens.detail import BackupDetailScreen

        backup = self.current_backup()
        if backup is not None:
            self.app.push_screen(BackupDetailScreen(backup))

    def selected_policy(self) -> str | None:
        backup = self.current_backup()
        return backup["policy"] if backup else self.table.policy

    def after_change(self) -> None:
        self.catalog_changed()
        pane = self.query_one(BackupDetail)
        if pane.display:
            pane.show(self.current_backup())
