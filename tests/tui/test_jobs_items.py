"""Live jobs items of issue 9: a duration column, final totals on done jobs, drill and copy
jobs labelled as such."""

from __future__ import annotations

from textual.widgets import DataTable

from insite_console import clock, copy, restore, who
from insite_console.tui import model
from tests.tui.tables import keyed_rows
from tests.tui.test_console import settle, static_text


async def test_copy_and_drill_jobs_are_labelled_with_duration_and_totals(console_workspace, tmp_path):
    from insite_console.tui.app import InsiteApp
    from insite_console.workspace import Workspace

    config = console_workspace.config.path
    config.write_text(config.read_text() + '\n[storage.offsite]\ntype = "local"\npath = "offsite"\n')
    ws = Workspace.load(config)
    ws.init_repository("offsite")
    etc = ws.catalog.backups(policy="etc")[0]
    copied = copy.run(ws, etc["id"], "offsite")
    assert copied["status"] == "succeeded"
    with who.acting_as("drill"):  # as a drill's restore step runs it
        restored = restore.run(ws, etc["id"], str(tmp_path / "scratch"))
    app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("3")
        await settle(app, pilot, 0.3)
        rows = {row["kind"]: row for row in keyed_rows(app.screen.query_one("#job-table", DataTable))}
        assert set(rows) >= {"copy", "restore (drill)", "backup"}
        copy_row, drill_row = rows["copy"], rows["restore (drill)"]
        assert copy_row["status"] == "✓ ok" and copy_row["subject"] == f"{etc['id']} → offsite"[:19] + "…"  # a long subject is marked cut
        assert drill_row["progress"] == f"{restored['files']:,} files · {clock.human_bytes(restored['bytes_written'])}"
        for row in (copy_row, drill_row):
            assert row["duration"] != "—" and row["duration"].endswith("s")  # Took: seconds at most here
        assert copy_row["progress"].startswith(f"{etc['files']:,} files · ")
        assert "Done: " in static_text(app, "#job-facts")
    ws.close()


def test_a_running_job_counts_its_duration_and_a_drill_says_so():
    view = model.JobView(id="x", kind="drill", subject="data_corruption", status="running",
                         started_at="2026-11-27T09:00:00Z")
    assert view.kind_text() == "DR drill"
    assert view.duration_text(clock.parse_iso("2026-11-27T09:02:05Z")) == clock.human_duration(125)
    assert view.progress_text().endswith("?%")  # running: a bar
    view.status, view.finished_at, view.files_done, view.bytes_done = "failed", "2026-11-27T09:01:00Z", 7, 2048
    assert view.duration_text() == clock.human_duration(60) and view.progress_text() == "7 files · 2.0 KiB"


async def test_a_cancelled_row_keeps_the_progress_column_at_80_columns(make_app, console_workspace):
    """Found by a tmux walk: '■ cancelled by USER@HOST' widened Status so much that the 80-column
    table dropped Progress for every row; the status is cut (the detail box names who in full)."""
    catalog = console_workspace.catalog
    catalog.start_run("c0ffee0000000001", "backup", "app_files")
    catalog.cancel_requested("c0ffee0000000001", "operator-on-call@bastion-eu-west-1.example.net")
    catalog.finish_run("c0ffee0000000001", "cancelled", "cancelled by the operator")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await settle(app, pilot, 0.3)
        table = app.screen.query_one("#job-table", DataTable)
        assert "progress" in [str(key.value) for key in table.columns]
        rows = {row["status"]: row for row in keyed_rows(table)}
        cancelled = next(row for status, row in rows.items() if status.startswith("■ cancelled"))
        assert cancelled["status"].endswith("…") or cancelled["status"] == "■ cancelled"
        table.move_cursor(row=[r["status"] for r in keyed_rows(table)].index(cancelled["status"]))
        await settle(app, pilot, 0.2)
        assert "cancelled by operator-on-call@bastion-eu-west-1.example.net" in static_text(app, "#job-facts")
