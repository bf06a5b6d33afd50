"""Reading a DataTable as a user reads it: by column, not by position. A narrow terminal drops
columns (widgets/fit.py), so the cell at index 4 is another column there; a dropped column is a
KeyError naming it, never a wrong cell read."""

from __future__ import annotations

from textual.widgets import DataTable


def table_rows(table: DataTable) -> list[list[str]]:
    """Each row's cells in the order shown: for tables whose columns never change."""
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def column_index(table: DataTable, key: str) -> int:
    """Where a column is now: a narrow terminal drops columns, so positions move."""
    return [column.key.value for column in table.ordered_columns].index(key)


def keyed_rows(table: DataTable) -> list[dict[str, str]]:
    """Each row as {column key: cell text}, only the columns shown."""
    keys = [column.key.value for column in table.ordered_columns]
    return [dict(zip(keys, row)) for row in table_rows(table)]
