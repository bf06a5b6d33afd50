"""Restore history and audit (issue 9): key 6 lists every restore, recovery and drill with who,
when, what, where, the outcome, how long and why; a restore over production asks for a reason
in the confirm step and records it."""

from __future__ import annotations

import socket

from textual.widgets import DataTable, Input

from insite_console import restore, who
from tests.tui.tables import keyed_rows
from tests.tui.test_console import _wizard_to_plan, settle, static_text


async def test_history_screen_lists_a_restore_with_who_where_and_why(make_app, console_workspace, tmp_path):
    etc = console_workspace.catalog.backups(policy="etc")[0]
    target = tmp_path / "beside"
    with who.acting_as("cli"):
        done = restore.run(console_workspace, etc["id"], str(target), reason="CHG-9: config check")
    app = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("6")
        await settle(app, pilot)
        assert app.current_mode == "history"
        rows = keyed_rows(app.screen.query_one("#history-table", DataTable))
        assert len(rows) == 1
        status, by, why, kind, took, where, what = (rows[0][key] for key in (
            "status", "who", "why", "kind", "duration", "where", "what"))
        assert (status, kind, why) == ("✓ ok", "restore", "CHG-9: config check")
        assert by == f"{who.user()}@{socket.gethostname()}" and where == (str(target) if len(str(target)) <= 32 else str(target)[:31] + "…")
        assert what.startswith(etc["id"]) and took != "—"
        facts = static_text(app, "#history-facts")
        assert f"restore {done['id']}" in facts and "Why: CHG-9: config check" in facts
        assert f"Who: {who.user()}@{socket.gethostname()} · cli" in facts


async def test_wizard_asks_why_before_a_restore_over_production(make_app, console_workspace, tmp_path,
                                                                monkeypatch):
    target = tmp_path / "production"
    # this target stands for the source's own location (a test must not restore into /)
    real = restore.over_source
    monkeypatch.setattr(restore, "over_source",
                        lambda ws, backup, where: str(where) == str(target) or real(ws, backup, where))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_catalog("etc")
        await pilot.pause()
        await _wizard_to_plan(app, pilot, target)
        screen = app.screen
        assert screen.plan["over_source"] is True
        await pilot.press("ctrl+n")  # plan -> confirm
        await pilot.pause()
        reason = screen.query_one("#reason-input", Input)
        assert screen.step == 4 and reason.display and reason.has_focus
        assert "this is over production" in static_text(app, "#confirm-text")
        await pilot.press("ctrl+n")  # Restore, with no reason
        await settle(app, pilot)
        assert screen.step == 4 and not app.console_jobs and not target.exists()
        assert "needs a reason or ticket id: nothing was written" in static_text(app, "#confirm-error")
        await pilot.press(*"INC-77 bad push")
        await pilot.press("enter")
        await settle(app, pilot, 0.2)
        await settle(app, pilot, 0.2)
        assert screen.step == 6 and "✓ ok" in static_text(app, "#result-text")
        await pilot.press("6")
        await settle(app, pilot)
        rows = keyed_rows(app.screen.query_one("#history-table", DataTable))
        assert rows[0]["where"].startswith("▲ ") and rows[0]["why"] == "INC-77 bad push"
    row = console_workspace.catalog.restores()[0]
    assert (row["reason"], row["over_source"], row["origin"]) == ("INC-77 bad push", True, "console")
