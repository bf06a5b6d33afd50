"""Issue 9: at 60x24 (a split tmux pane) and 80x24 every main screen keeps `q Quit` and
`? Help` in the footer, tables drop whole columns instead of cutting their headers, and a toast
never covers the selected job; at 120x40 everything is still there."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable
from textual.widgets._footer import FooterKey
from textual.widgets._toast import Toast

from insite_console.tui.screens import dashboard, drills, history, jobs
from insite_console.tui.widgets.backup_table import COLUMNS as BACKUP_COLUMNS
from insite_console.tui.widgets.backup_table import BackupTable
from tests.tui.test_console import settle

# screen: keys from the dashboard, the table on it, the titles it may show
SCREENS = {
    "dashboard": ([], "#health", dashboard.HEALTH_COLUMNS),
    "catalog": (["2"], None, None),
    "jobs": (["3"], "#job-table", jobs.JOB_COLUMNS),
    "restore": (["4"], None, None),
    "drills": (["5"], "#drill-steps", drills.STEP_COLUMNS),
    "history": (["6"], "#history-table", history.HISTORY_COLUMNS),
    "trends": (["p"], None, None),
    "help": (["question_mark"], None, None),
}


def footer_keys(app) -> list[FooterKey]:
    return list(app.screen.query(FooterKey))


def footer_text(app) -> str:
    return " ".join(f"{key.key_display} {key.description}" for key in footer_keys(app))


def shown_headers(app, selector: str) -> tuple[list[str], int, int]:
    """(header texts, the width the columns take, the width the table has for them)."""
    table = app.screen.query_one(selector, DataTable)
    headers = [column.label.plain for column in table.columns.values()]
    used = sum(column.get_render_width(table) for column in table.columns.values())
    return headers, used, table.scrollable_content_region.width


async def _open(app, pilot, keys) -> None:
    await pilot.pause()
    for key in keys:
        await pilot.press(key)
        await settle(app, pilot, 0.2)
    await settle(app, pilot, 0.1)


@pytest.mark.parametrize("size", [(60, 24), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
async def test_narrow_screens_keep_quit_help_and_whole_headers(make_app, screen, size):
    keys, selector, columns = SCREENS[screen]
    app = make_app(alerts=False)
    async with app.run_test(size=size) as pilot:
        await _open(app, pilot, keys)
        text = footer_text(app)
        assert "q Quit" in text and "? Help" in text, text
        for key in footer_keys(app):  # nothing cut at the right edge
            assert key.region.right <= size[0], (key.key_display, key.description, key.region)
        if selector is not None:
            headers, used, room = shown_headers(app, selector)
            titles = [c.title for c in columns]
            assert headers and all(h in titles for h in headers), headers  # whole words only
            assert headers == [t for t in titles if t in headers]  # in their declared order
            assert used <= room, (headers, used, room)
            if size[0] == 60:
                assert len(headers) < len(titles)  # something was dropped, not cut
        if screen == "catalog":
            table = app.screen.query_one(BackupTable)
            shown = table.visible_columns()
            assert sum(c.width + 1 for c in shown) - 1 <= table.scrollable_content_region.width
            header = "".join(seg.text for seg in table.render_line(0)).rstrip()
            assert all(c.title in header for c in shown)
            status = str(app.screen.query_one("#catalog-status").render())
            assert len(status) <= size[0] - 2 and status.endswith("▼" if size[0] == 60 else "first"), status


@pytest.mark.parametrize("screen", list(SCREENS))
async def test_wide_screens_keep_every_column_and_key(snapshot_workspace, screen):
    """Over the snapshots' workspace: long failure texts, a running job, who started each."""
    from insite_console.tui.app import InsiteApp
    from tests.tui.test_snapshots import _seed_history

    keys, selector, columns = SCREENS[screen]
    _seed_history(snapshot_workspace)
    app = InsiteApp(snapshot_workspace, theme="insite-dark", detach_jobs=False, poll_seconds=3600, alerts=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open(app, pilot, keys)
        text = footer_text(app)
        assert "q Quit" in text and "? Help" in text
        if selector is not None:
            headers, used, room = shown_headers(app, selector)
            assert headers == [c.title for c in columns] and used <= room, (headers, used, room)
        if screen == "dashboard":
            assert all(f"{n} {name}" in text for n, name in
                       (("1", "Dashboard"), ("2", "Catalog"), ("3", "Jobs"), ("4", "Restore"), ("5", "DR")))


async def test_the_wizard_step_bar_and_points_fit_one_line_each(make_app):
    app = make_app(alerts=False)
    async with app.run_test(size=(60, 24)) as pilot:
        await _open(app, pilot, ["4"])
        bar = str(app.screen.query_one("#steps").render())
        assert "1 What" in bar and "Progress" not in bar and len(bar) <= 58, bar
        options = app.screen.query_one("#points")
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels and all(len(label) <= 54 for label in labels), labels
        await pilot.resize_terminal(120, 40)
        await settle(app, pilot, 0.2)
        bar = str(app.screen.query_one("#steps").render())
        assert "6 Progress" in bar and "7 Result" in bar
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert all(" files" in label for label in labels)


def toast_cells(app, region) -> list[tuple[int, int]]:
    """The cells of `region` where what the user sees is a toast (the topmost widget there)."""
    covered = []
    for y in range(region.y, region.bottom):
        for x in range(region.x, region.right):
            widget, _ = app.screen.get_widget_at(x, y)
            if isinstance(widget, Toast):
                covered.append((x, y))
    return covered


def selected_row(app):
    from textual.geometry import Region

    table = app.screen.query_one("#job-table", DataTable)
    return Region(table.region.x, table.region.y + 1 + table.cursor_row - round(table.scroll_y), table.region.width, 1)


@pytest.mark.parametrize("size", [(60, 24), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_toasts_never_cover_the_selected_job(make_app, size):
    app = make_app()
    async with app.run_test(size=size, notifications=True) as pilot:
        await _open(app, pilot, ["3"])
        app.start_backup("etc")  # as `b` then a policy: its toasts (started, succeeded) show here
        await settle(app, pilot, 0.3)
        assert list(app.screen.query(Toast)), "no toast shown"
        detail = app.screen.query_one("#job-detail").region
        everywhere = toast_cells(app, app.screen.region)
        assert everywhere, "no toast visible"
        assert not toast_cells(app, selected_row(app)) and not toast_cells(app, detail)
        # the selected row is the last one, low in the table: the toasts go above it
        for _ in range(3):
            app.start_backup("etc")
            await settle(app, pilot, 0.2)
        table = app.screen.query_one("#job-table", DataTable)
        table.move_cursor(row=table.row_count - 1)
        await settle(app, pilot, 0.1)
        app.notify("a toast while the last row is selected")
        await settle(app, pilot, 0.2)
        assert toast_cells(app, app.screen.region)
        assert not toast_cells(app, selected_row(app)) and not toast_cells(app, detail)
