"""Who ran what (issue 9, "Then"): every run records its OS user, host and origin, Live jobs
shows it, and a cancel is `■ cancelled by USER@HOST`, stored with the run, not an error."""

from __future__ import annotations

import socket

from textual.widgets import DataTable

from insite_console import backup, scheduler, who
from tests.tui.tables import keyed_rows
from tests.tui.test_console import settle, slow_workspace, static_text  # noqa: F401


def test_runs_record_user_host_and_origin(console_workspace, monkeypatch):
    monkeypatch.delenv("INSITE_ORIGIN", raising=False)
    plain = backup.run(console_workspace, "etc", "full")["id"]
    monkeypatch.setenv("INSITE_FAKE_NOW", "2099-01-01T00:00:00Z")  # every policy is due
    scheduled = {r["id"] for r in scheduler.Scheduler(console_workspace, log=lambda m: None).run_once()
                 if r.get("id")}
    with who.acting_as("drill"):
        drilled = backup.run(console_workspace, "etc", "full")["id"]
    catalog = console_workspace.catalog
    user, host = who.user(), socket.gethostname()
    assert tuple(catalog.run(plain)[k] for k in ("user", "host", "origin")) == (user, host, "cli")
    assert scheduled and all(catalog.run(r)["origin"] == "scheduler" for r in scheduled)
    assert catalog.run(drilled)["origin"] == "drill"


async def test_a_cancel_says_who_and_is_stored_with_the_run(slow_workspace):  # noqa: F811
    from insite_console.tui.app import InsiteApp

    app = InsiteApp(slow_workspace, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    me = f"{who.user()}@{socket.gethostname()}"
    async with app.run_test(size=(160, 40)) as pilot:
        job = app.start_backup("big")
        await pilot.press("3")
        for _ in range(50):
            await pilot.pause(0.1)
            rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
            if rows and rows[0]["status"] == "▶ running" and job.run_id:
                break
        assert rows[0]["origin"] == f"{me} · console"  # the "Started by" column
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("tab", "enter")
        await settle(app, pilot, 0.3)
        assert job.status == "cancelled"
        rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
        assert rows[0]["status"] == f"■ cancelled by {me}"
        facts = static_text(app, "#job-facts")
        assert f"■ cancelled by {me}" in facts and "✗" not in facts
        assert any(f"cancelled by {me}" in n.message for n in app._notifications)
    run = slow_workspace.catalog.run(job.run_id)
    assert run["status"] == "cancelled" and run["cancelled_by"] == me
    assert (run["user"], run["origin"]) == (who.user(), "console")
