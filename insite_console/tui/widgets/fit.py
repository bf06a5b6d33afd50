"""What a narrow terminal drops: table columns and footer keys chosen by width and priority.

A table or a footer cut on the right loses whole words at random (`Next run (UTC)` became
`Next`, `q Quit` vanished at 60 columns). Instead each column and each key carries a priority
(0 is kept longest), and what does not fit is dropped whole, lowest value first; what is kept
stays in its declared order.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text


def fit(items: list, widths: list[int], priorities: list[int], width: int, gap: int = 0) -> list:
    """The items that fit in `width` (each takes its width plus `gap`), taken in priority order
    (a lower priority number first; a narrower lower-value item may still fit where a wider one
    did not), returned in their original order. The first item of the best priority is always kept."""
    order = sorted(range(len(items)), key=lambda i: priorities[i])
    chosen: set[int] = set()
    used = 0
    for i in order:
        need = widths[i] + gap
        if used + need <= width or not chosen:
            chosen.add(i)
            used += need
    return [items[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class Col:
    """A DataTable column: what it is called, how much it is worth on a narrow terminal, and the
    widest its cells get (longer cells end in `…`, their full text is in the detail pane)."""

    key: str
    title: str
    priority: int = 0
    max_width: int | None = None
    # elastic: the column is kept from this width on and takes what the others leave, its
    # longer cells ending in `…` (a failure text, who started a job: never worth a column less)
    min_width: int | None = None


def _clip(cell, width: int | None):
    if width is None:
        return cell
    if isinstance(cell, Text):
        if cell.cell_len <= width:
            return cell
        cell = cell.copy()
        cell.truncate(width, overflow="ellipsis")
        return cell
    text = str(cell)
    return text if cell_len(text) <= width else text[: width - 1] + "…"


def _width(cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


def fill_table(table, columns: list[Col], rows: list[tuple[str, dict]], width: int) -> list[Col]:
    """Show `rows` (row key, {column key: cell}) in a DataTable with the columns that fit in
    `width` (the table's, computed by the screen from its own width: on a resize the table's
    size is not laid out yet), measured on these rows; the columns are rebuilt only when the
    set shown changes. Returns the columns shown."""
    rows = [(key, {c.key: _clip(cells.get(c.key, ""), c.max_width) for c in columns}) for key, cells in rows]
    pad = 2 * table.cell_padding
    if table.size.height and len(rows) > table.size.height - 1:
        width -= table.styles.scrollbar_size_vertical  # rows below the fold: leave the scrollbar room
    natural = {c.key: max([cell_len(c.title)] + [_width(cells[c.key]) for _, cells in rows]) + pad for c in columns}
    widths = [min(natural[c.key], max(c.min_width, cell_len(c.title)) + pad) if c.min_width else natural[c.key]
              for c in columns]
    shown = fit(columns, widths, [c.priority for c in columns], width) if width > 0 else list(columns)
    spare = width - sum(w for c, w in zip(columns, widths) if c in shown)
    for column in shown:
        if column.min_width and natural[column.key] > widths[columns.index(column)]:
            room = widths[columns.index(column)] + max(0, spare) - pad
            spare -= natural[column.key] - widths[columns.index(column)]
            for _, cells in rows:
                cells[column.key] = _clip(cells[column.key], room)
    keys = [c.key for c in shown]
    if keys != [str(k.value) for k in table.columns]:
        table.clear(columns=True)
        for column in shown:
            table.add_column(column.title, key=column.key)
    else:
        table.clear()
    for key, cells in rows:
        table.add_row(*(cells[k] for k in keys), key=key)
    return shown
