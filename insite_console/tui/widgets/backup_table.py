"""A virtual table over the catalog: only the visible page is ever read.

Textual's DataTable keeps every row in memory (41 s to show 100k backups here). This widget
asks SQLite for pages of 200 rows (`Catalog.backups(limit=, offset=, search=, order=)`) as
they scroll into view, keeps a few pages cached, and renders lines itself (the line API),
so showing, scrolling and filtering cost the same with 100 or 100,000 backups.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.color import Color
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from insite_console.tui import model

PAGE = 200
PAGES_KEPT = 8


@dataclass(frozen=True)
class Column:
    key: str  # catalog column, or a computed one
    title: str
    width: int
    priority: int  # lower is dropped last when the terminal is narrow
    sort: str | None = None  # catalog column to ORDER BY
    right: bool = False


COLUMNS = (
    Column("status", "Status", 11, 0, "status"),
    Column("started_at", "Started (UTC)", 16, 0, "started_at"),
    Column("policy", "Policy", 12, 0, "policy"),
    Column("type", "Type", 5, 1, "type"),
    Column("bytes_read", "Read", 10, 1, "bytes_read", right=True),
    Column("bytes_stored", "Stored", 10, 2, "bytes_stored", right=True),
    Column("duration", "Took", 7, 3),
    Column("source", "Source", 12, 4, "source"),
    Column("storages", "Storages", 12, 5, "storage"),
    Column("id", "ID", 8, 1, "id"),
)
SORTABLE = [c for c in COLUMNS if c.sort]
TYPE_SHORT = {"full": "full", "incremental": "incr", "differential": "diff"}


class BackupTable(ScrollView, can_focus=True):
    """Rows of backups, newest first by default; header on the first line."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First", show=False),
        Binding("end,G", "last", "Last", show=False),
        Binding("enter", "select", "Details", show=False),
    ]
    COMPONENT_CLASSES = {"backup-table--header", "backup-table--cursor", "backup-table--even"}
    DEFAULT_CSS = """
    BackupTable { height: 1fr; }
    BackupTable > .backup-table--header { text-style: bold; background: $panel; color: $foreground; }
    BackupTable > .backup-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: bold; }
    BackupTable:blur > .backup-table--cursor { background: $block-cursor-blurred-background;
        color: $foreground; text-style: none; }
    BackupTable > .backup-table--even { background: $surface; }
    BackupTable:ansi > .backup-table--cursor { text-style: reverse bold; }
    """

    cursor = reactive(0, init=False)

    class Highlighted(Message):
        def __init__(self, table: "BackupTable", backup: dict | None) -> None:
            super().__init__()
            self.table = table
            self.backup = backup

    class Selected(Message):
        def __init__(self, table: "BackupTable", backup: dict) -> None:
            super().__init__()
            self.table = table
            self.backup = backup

    def __init__(self, catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self.search = ""
        self.policy: str | None = None
        self.sort_column = "started_at"
        self.descending = True
        self.total = 0
        self._pages: OrderedDict[int, list[dict]] = OrderedDict()
        self._storages: dict[str, str] = {}
        self.fetches = 0  # pages read from SQLite (the benchmark reports it)

    # ----- data --------------------------------------------------------------------------

    @property
    def order(self) -> str:
        return f"{self.sort_column} {'DESC' if self.descending else 'ASC'}"

    def reload(self, keep_cursor: bool = False) -> None:
        """Re-count and drop the cached pages (after a filter, a sort, or a catalog change)."""
        self._pages.clear()
        self._storages.clear()
        self.total = self.catalog.count_backups(policy=self.policy, search=self.search or None,
                                                search_statuses=model.statuses_shown_as(self.search))
        self.virtual_size = Size(self._table_width(), self.total + 1)
        cursor = min(self.cursor, max(0, self.total - 1)) if keep_cursor else 0
        if cursor != self.cursor:
            self.cursor = cursor
        else:
            self._post_highlight()
        if not keep_cursor:
            self.scroll_to(y=0, animate=False)
        self.refresh()

    def set_query(self, search: str | None = None, policy: str | None = None) -> None:
        self.search = search or ""
        self.policy = policy
        self.reload()

    def set_sort(self, column: str, descending: bool | None = None) -> None:
        if descending is None:
            descending = not self.descending if column == self.sort_column else column in (
                "started_at", "bytes_read", "bytes_stored")
        self.sort_column = column
        self.descending = descending
        self.reload()

    def row(self, index: int) -> dict | None:
        if index < 0 or index >= self.total:
            return None
        page_no = index // PAGE
        page = self._pages.get(page_no)
        if page is None:
            page = self._fetch(page_no)
            self.fetches += 1
            self._pages[page_no] = page
            while len(self._pages) > PAGES_KEPT:
                self._pages.popitem(last=False)
        else:
            self._pages.move_to_end(page_no)
        offset = index - page_no * PAGE
        return page[offset] if offset < len(page) else None

    def _fetch(self, page_no: int) -> list[dict]:
        """One page, read from the catalog (which keeps the last page as cheap as the first)."""
        if self.sort_column not in {c.sort for c in SORTABLE}:
            self.sort_column = "started_at"
        return self.catalog.backups_page(page_no * PAGE, PAGE, self.total, self.sort_column, self.descending,
                                         policy=self.policy, search=self.search or None,
                                         search_statuses=model.statuses_shown_as(self.search))

    def storages_of(self, backup: dict) -> str:
        text = self._storages.get(backup["id"])
        if text is None:
            names = self.catalog.backup_storages(backup["id"]) or ([backup["storage"]] if backup["status"] == "succeeded" else [])
            text = ",".join(names) or "—"
            if len(self._storages) > 4 * PAGE:
                self._storages.clear()
            self._storages[backup["id"]] = text
        return text

    @property
    def selected(self) -> dict | None:
        return self.row(self.cursor)

    # ----- layout ------------------------------------------------------------------------

    def visible_columns(self) -> list[Column]:
        width = self.scrollable_content_region.width or self.size.width or 120
        columns = sorted(COLUMNS, key=lambda c: c.priority)
        chosen: list[Column] = []
        used = 0
        for column in columns:
            if used + column.width + 1 <= width or not chosen:
                chosen.append(column)
                used += column.width + 1
        return [c for c in COLUMNS if c in chosen]

    def _table_width(self) -> int:
        return max(1, self.scrollable_content_region.width or self.size.width or 1)

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self._table_width(), self.total + 1)
        self.refresh()

    def _cell(self, backup: dict, column: Column) -> str:
        key = column.key
        if key == "status":
            return model.status_label(backup["status"])[0]
        if key == "started_at":
            return model.short_time(backup["started_at"])
        if key in ("bytes_read", "bytes_stored"):
            return model.size_text(backup[key]) if backup["status"] == "succeeded" else "—"
        if key == "duration":
            return model.duration_text(backup["started_at"], backup["finished_at"])
        if key == "type":
            return TYPE_SHORT.get(backup["type"], backup["type"])
        if key == "id":
            return backup["id"][:8]  # a unique prefix is enough for every command (`show`, `restore`)
        if key == "storages":
            return self.storages_of(backup)
        return str(backup.get(key) or "—")

    @staticmethod
    def _fit(text: str, column: Column) -> str:
        if len(text) > column.width:
            text = text[: column.width - 1] + "…"
        return text.rjust(column.width) if column.right else text.ljust(column.width)

    def _role_style(self, role: str) -> Style:
        value = self.app.theme_variables.get(role)
        try:
            return Style(color=Color.parse(value).rich_color) if value else Style()
        except Exception:
            return Style()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        columns = self.visible_columns()
        if y == 0:
            header = self.get_component_rich_style("backup-table--header")
            segments = []
            for column in columns:
                title = column.title
                if column.sort == self.sort_column:
                    title += " ▼" if self.descending else " ▲"
                segments.append(Segment(self._fit(title, column) + " ", header))
            return Strip(segments).adjust_cell_length(width, header)
        index = self.scroll_offset.y + y - 1
        backup = self.row(index)
        if backup is None:
            return Strip.blank(width, base)
        style = base
        if index % 2 == 0:
            style = base + self.get_component_rich_style("backup-table--even")
        is_cursor = index == self.cursor
        if is_cursor:
            style = base + self.get_component_rich_style("backup-table--cursor")
        segments = []
        for column in columns:
            text = self._fit(self._cell(backup, column), column) + " "
            cell_style = style
            if column.key == "status" and not is_cursor:
                cell_style = style + self._role_style(model.status_label(backup["status"])[1])
            segments.append(Segment(text, cell_style))
        return Strip(segments).adjust_cell_length(width, style)

    # ----- cursor --------------------------------------------------------------------------

    def _visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def watch_cursor(self, old: int, new: int) -> None:
        top = self.scroll_offset.y
        rows = self._visible_rows()
        if new < top:
            self.scroll_to(y=new, animate=False)
        elif new >= top + rows:
            self.scroll_to(y=new - rows + 1, animate=False)
        self.refresh()
        self._post_highlight()

    def _post_highlight(self) -> None:
        self.post_message(self.Highlighted(self, self.selected))

    def action_cursor(self, delta: int) -> None:
        if self.total:
            self.cursor = max(0, min(self.total - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * self._visible_rows())

    def action_first(self) -> None:
        self.cursor = 0

    def action_last(self) -> None:
        if self.total:
            self.cursor = self.total - 1

    def action_select(self) -> None:
        backup = self.selected
        if backup is not None:
            self.post_message(self.Selected(self, backup))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = 0
            for column in self.visible_columns():
                if x <= offset.x < x + column.width + 1:
                    if column.sort:
                        self.set_sort(column.sort)
                    return
                x += column.width + 1
            return
        index = self.scroll_offset.y + offset.y - 1
        if 0 <= index < self.total:
            if index == self.cursor and event.chain == 2:
                self.action_select()
            self.cursor = index
