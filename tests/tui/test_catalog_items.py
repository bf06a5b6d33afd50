"""Catalog screen items of issue 9: the filter matches what is shown, open details follow a
verify, forgetting the last restore point warns, dialog buttons move with the arrows, and a
folder with some ticked children shows a partial mark."""

from __future__ import annotations

from insite_console import backup
from tests.tui.test_console import settle, static_text


async def test_filter_matches_the_status_as_displayed(make_app, console_workspace):
    catalog = console_workspace.catalog
    catalog.insert_backup({"id": "00000000000000f1", "policy": "etc", "source": "etc", "source_type": "files",
                           "storage": "local", "type": "full", "status": "failed",
                           "started_at": "2026-11-27T09:10:00Z", "error": "disk full"})
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.table
        assert table.total == 3
        await pilot.press("slash", *"ok")  # the Status column says "✓ ok" for a succeeded backup
        await pilot.pause(0.4)
        assert table.total == 2
        assert {table.row(i)["status"] for i in range(table.total)} == {"succeeded"}
        await pilot.press("backspace", "backspace", *"✗ fail")
        await pilot.pause(0.4)
        assert table.total == 1 and table.selected["id"] == "00000000000000f1"


async def test_open_details_show_a_verify_that_just_finished(make_app, console_workspace):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_catalog("etc")
        await pilot.pause()
        await pilot.press("enter")  # the details
        await settle(app, pilot)
        assert "never verified" in static_text(app, "#detail-verify")
        await pilot.press("v")  # quick or deep: Cancel has the focus, → moves to Quick
        await pilot.pause()
        await pilot.press("right")
        assert app.screen.focused.id == "choice-quick"
        await pilot.press("enter")
        await settle(app, pilot, 0.2)
        await settle(app, pilot)
        text = static_text(app, "#detail-verify")
        assert "never verified" not in text and "quick" in text and "ok" in text


async def test_forgetting_the_last_restore_point_of_a_policy_warns(make_app, console_workspace):
    backup.run(console_workspace, "app_files", "full")  # app_files has two, etc one
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for policy, last in (("etc", True), ("app_files", False)):
            app.open_catalog(policy)
            await pilot.pause()
            await pilot.press("d")
            await pilot.pause()
            body = static_text(app, "#dialog-body")
            assert ("LAST restore point of " + policy in body) is last, body
            await pilot.press("escape")
            await pilot.pause()
        assert len(console_workspace.catalog.backups(policy="etc")) == 1


async def test_dialog_buttons_move_with_the_arrow_keys(make_app, console_workspace):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_catalog("etc")
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        dialog = app.screen
        assert dialog.focused.id == "no"
        await pilot.press("right")
        assert dialog.focused.id == "yes"
        await pilot.press("right")  # stays on the last button
        assert dialog.focused.id == "yes"
        await pilot.press("left")
        assert dialog.focused.id == "no"
        await pilot.press("enter")  # No: nothing forgotten
        await settle(app, pilot)
    assert len(console_workspace.catalog.backups(policy="etc")) == 1


async def test_a_folder_with_some_ticked_children_shows_a_partial_mark(make_app, console_workspace):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_catalog("app_files")
        await pilot.pause()
        await pilot.press("r", "ctrl+n")  # the wizard on it, to "which parts"
        await settle(app, pilot)
        tree = app.screen.query_one("#parts-tree")
        stored = str(console_workspace.config.base_dir / "data/app/src").lstrip("/").split("/")
        node, path = tree.root, []
        for part in stored:  # open the folders down to data/app/src, as an operator would
            path.append(part)
            node = next(n for n in node.children if n.data is not None and n.data.path == "/".join(path))
            node.expand()
            await pilot.pause()
        src = node
        module = next(n for n in src.children if str(n.label).startswith("☐ module_0.py"))
        tree.move_cursor(module)
        await pilot.press("space")
        await pilot.pause()
        assert str(module.label).startswith("☑ module_0.py")
        assert str(src.label) == "◐ src/"
        assert all(str(a.label).startswith("◐ ") for a in _ancestors(src) if a.data is not None)
        await pilot.press("space")  # unticked again: no mark left
        await pilot.pause()
        assert str(src.label) == "☐ src/"
        assert not tree.selected_paths


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent



async def test_widening_the_terminal_fills_the_detail_pane_with_the_highlighted_backup(make_app, console_workspace):
    """Found by hand: at 80 columns the detail pane is hidden and misses every highlight; widened
    to 120 it showed 'Select a backup' beside a highlighted row."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.table
        table.focus()
        await pilot.press("down")
        await pilot.pause()
        highlighted = table.selected
        assert highlighted is not None
        await pilot.resize_terminal(120, 40)
        await settle(app, pilot)
        summary = static_text(app, "#detail-summary")
        assert "Select a backup" not in summary and highlighted["id"] in summary, summary
