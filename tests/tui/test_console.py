"""Pilot tests: every screen and flow of the console against a real console_workspace and repository."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from insite_console import clock, who
from insite_console.tui.messages import JobFinished, JobProgress
from tests.tui.tables import keyed_rows


async def settle(app, pilot, delay: float = 0.05) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause(delay)
    await app.workers.wait_for_complete()
    await pilot.pause()


def static_text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


# ----- dashboard ----------------------------------------------------------------------------


async def test_dashboard_is_first_and_shows_health(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.current_mode == "dashboard"
        rows = keyed_rows(app.screen.query_one("#health", DataTable))
        assert [row["policy"] for row in rows] == ["app_files", "etc"]
        assert all(row["status"].startswith("✓ ok") for row in rows)  # a symbol and a word, not only a colour
        assert "2026" in rows[0]["next"]  # next run from the cron schedule
        assert "local (local)" in static_text(app, "#storage")
        assert "succeeded" in static_text(app, "#events")


# ----- jobs -------------------------------------------------------------------------------


async def test_backup_now_runs_in_a_worker_and_finishes_in_live_jobs(make_app, console_workspace):
    messages = []
    app = make_app()
    before = console_workspace.catalog.count_backups()
    async with app.run_test(size=(120, 40), message_hook=messages.append) as pilot:
        await pilot.pause()
        await pilot.press("b")  # the dashboard's highlighted policy: app_files
        await settle(app, pilot)
        await pilot.press("3")
        await pilot.pause()
        rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
        assert (rows[0]["status"], rows[0]["kind"], rows[0]["subject"]) == ("✓ ok", "backup", "app_files")
        assert rows[0]["origin"] == f"{who.user()}@{socket.gethostname()} · console"
        assert "· this console ·" in static_text(app, "#job-facts")
        done = rows[0]
        assert done["duration"] != "—"  # how long it took
        assert "Done: " in static_text(app, "#job-facts")
        assert "succeeded" in static_text(app, "#job-log")
    assert console_workspace.catalog.count_backups() == before + 1
    made = console_workspace.catalog.backups(policy="app_files")[0]
    assert done["progress"] == f"{made['files']:,} files · {clock.human_bytes(made['bytes_read'])}"  # its final totals
    assert any(isinstance(m, JobProgress) for m in messages)
    finished = [m for m in messages if isinstance(m, JobFinished)]
    assert finished and finished[0].status == "succeeded" and finished[0].result["policy"] == "app_files"


async def test_runs_of_other_processes_appear_and_finishing_one_toasts(make_app, console_workspace):
    from insite_console.process import start_ticks

    app = make_app()
    catalog = console_workspace.catalog
    async with app.run_test(size=(120, 40)) as pilot:
        catalog.start_run("feedfacefeedface", "backup", "etc")
        catalog.db.execute("UPDATE runs SET pid = ?, process_start = ?, bytes_done = 50, bytes_total = 100, "
                           "phase = 'reading' WHERE id = 'feedfacefeedface'",
                           (os.getppid(), start_ticks(os.getppid())))
        await pilot.press("3")
        await pilot.pause(0.4)
        rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
        assert rows[0]["status"] == "▶ running" and rows[0]["origin"] == f"{who.user()}@{socket.gethostname()} · cli"
        assert "50%" in rows[0]["progress"] and "· other process ·" in static_text(app, "#job-facts")
        catalog.finish_run("feedfacefeedface", "failed", "disk full")
        await pilot.pause(0.4)
        assert any("started elsewhere" in n.message for n in app._notifications)
        rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
        assert rows[0]["status"] == "✗ failed"


@pytest.fixture
def slow_workspace(console_workspace, monkeypatch):
    """A policy whose backup takes seconds: 40 files, and each stored chunk delayed."""
    from insite_console.repo.repository import Repository
    from insite_console.workspace import Workspace

    root = console_workspace.config.base_dir
    (root / "data/big").mkdir(parents=True)
    for i in range(40):
        (root / f"data/big/blob-{i:03d}.bin").write_bytes(os.urandom(16 << 10))
    text = (root / "config.toml").read_text() + """
[source.big]
type = "files"
paths = ["data/big"]

[policy.big]
source = "big"
storage = "local"
type = "full"
"""
    (root / "config.toml").write_text(text)
    original = Repository._store_chunk

    def slow_store(self, *args, **kwargs):
        time.sleep(0.25)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Repository, "_store_chunk", slow_store)
    ws = Workspace.load(root / "config.toml")
    yield ws
    ws.close()


async def test_cancel_a_running_job_after_confirmation(slow_workspace):
    from insite_console.tui.app import InsiteApp

    app = InsiteApp(slow_workspace, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        app.start_backup("big")
        await pilot.press("3")
        for _ in range(50):
            await pilot.pause(0.1)
            rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
            if rows and rows[0]["status"] == "▶ running":
                break
        assert rows[0]["status"] == "▶ running" and rows[0]["subject"] == "big"
        await pilot.press("c")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog", (app.focused, app.screen.selected_id(), rows)
        await pilot.press("escape")  # Esc means No: the job keeps running
        await pilot.pause()
        assert not any(j.cancel.cancelled for j in app.console_jobs.values())
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("tab", "enter")  # the second button: cancel the job
        await settle(app, pilot, 0.3)
        job = next(iter(app.console_jobs.values()))
        assert job.status == "cancelled"
        rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
        assert rows[0]["status"].startswith("■ cancelled")  # who, where the columns leave room, and:
        assert "■ cancelled by " in static_text(app, "#job-facts")
    backup = slow_workspace.catalog.backups(policy="big")[0]
    assert backup["status"] == "cancelled"


# ----- catalog ------------------------------------------------------------------------------


async def test_catalog_filter_sort_and_clear(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.table
        assert table.total == 2
        await pilot.press("slash")
        assert app.screen.query_one("#filter", Input).has_focus
        await pilot.press(*"etc")
        await pilot.pause(0.4)
        assert table.total == 1 and table.selected["policy"] == "etc"
        assert "filter etc" in static_text(app, "#catalog-status")
        await pilot.press("enter")
        assert table.has_focus
        await pilot.press("escape")
        await pilot.pause()
        assert table.total == 2
        await pilot.press("s")  # next sortable column after Started: Policy
        assert table.sort_column == "policy"
        await pilot.press("S")
        assert not table.descending or table.sort_column == "policy"


async def test_catalog_with_100k_backups_is_paged_from_sqlite(make_app, console_workspace):
    rows = [(f"{i:016x}", "app_files", "app_files", "files", "local", "incremental", "succeeded",
             f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", None, 1000 + i, 500, 3)
            for i in range(100_000)]
    db = console_workspace.catalog.db
    db.execute("BEGIN")
    db.executemany("INSERT INTO backups (id, policy, source, source_type, storage, type, status, started_at, "
                   "finished_at, bytes_read, bytes_stored, files) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("COMMIT")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.table
        assert table.total == 100_002
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor == 100_001 and table.selected is not None
        await pilot.press("pageup", "pageup", "home")
        await pilot.pause()
        assert table.cursor == 0
        assert table.fetches <= 6  # only the pages shown were read (the speed is bench/bench_tui.py's)


async def test_backup_details_show_manifest_chain_and_stored_tree(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause(0.3)
        await settle(app, pilot)
        pane = static_text(app, "#detail-manifest")
        assert "files" in pane and "compression zstd" in pane
        await pilot.press("enter")
        await settle(app, pilot)
        assert type(app.screen).__name__ == "BackupDetailScreen"
        assert "Parent chain" in static_text(app, "#detail-chain")
        assert "entries" in static_text(app, "#files-status")
        tree = app.screen.query_one("#files")
        assert "etc" in tree.children_of or any("data" in key for key in tree.children_of)
        await pilot.press("escape")
        assert type(app.screen).__name__ == "CatalogScreen"


async def test_verify_from_the_catalog_records_the_result(make_app, console_workspace):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        backup_id = app.screen.table.selected["id"]
        await pilot.press("v")
        await pilot.pause()
        assert type(app.screen).__name__ == "ChoiceDialog"
        assert app.screen.focused.id == "cancel"  # the first button, focused, cancels
        await pilot.click("#choice-deep")
        await settle(app, pilot)
        assert any("verify of" in n.message and "ok" in n.message for n in app._notifications)
    rows = console_workspace.catalog.verifications(backup_id)
    assert rows and rows[0]["deep"] and rows[0]["status"] == "ok"


async def test_forget_asks_and_escape_or_enter_mean_no(make_app, console_workspace):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        backup_id = app.screen.table.selected["id"]
        await pilot.press("d")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog"
        await pilot.press("escape")
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("enter")  # focus is on No
        await settle(app, pilot)
        assert console_workspace.catalog.backup(backup_id) is not None
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("tab", "enter")
        await settle(app, pilot, 0.2)
        assert console_workspace.catalog.backup(backup_id) is None
        assert app.screen.table.total == 1


# ----- restore wizard -----------------------------------------------------------------------


async def _wizard_to_plan(app, pilot, target: Path) -> None:
    """From the catalog's selected backup (etc) through parts and a custom target to the plan."""
    await pilot.press("r")
    await pilot.pause()
    assert app.current_mode == "restore"
    await pilot.press("ctrl+n")  # what: preset from the catalog
    await settle(app, pilot)
    await pilot.press("ctrl+n")  # parts: everything
    await pilot.pause()
    screen = app.screen
    screen.query_one("#where-custom").value = True
    await pilot.pause()
    screen.query_one("#target", Input).value = str(target)
    await pilot.pause()
    await pilot.press("ctrl+n")  # where
    await settle(app, pilot)
    assert screen.step == 3 and screen.plan is not None


async def test_restore_wizard_full_path_restores_byte_for_byte(make_app, console_workspace, tmp_path):
    app = make_app()
    target = tmp_path / "restored"
    source = console_workspace.config.base_dir / "data/etc"
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_catalog("etc")  # as the dashboard's enter on a policy does
        await pilot.pause()
        assert app.screen.table.selected["policy"] == "etc"
        await _wizard_to_plan(app, pilot, target)
        screen = app.screen
        assert not target.exists()  # nothing written by the plan
        assert "overwrite 0" in static_text(app, "#plan-summary")
        await pilot.press("ctrl+n")  # plan -> confirm
        await pilot.pause()
        assert screen.step == 4
        await pilot.press("ctrl+n")  # Restore
        await settle(app, pilot, 0.2)
        await settle(app, pilot, 0.2)
        assert screen.step == 6
        result = static_text(app, "#result-text")
        assert "✓ ok" in result and "target matches the backup" in result
    restored = target / str(source).lstrip("/")
    for name in ("app.toml", "hosts"):
        assert (restored / name).read_bytes() == (source / name).read_bytes()


async def test_wizard_refuses_an_overwrite_without_the_typed_target(make_app, console_workspace, tmp_path):
    from insite_console import restore

    source = console_workspace.config.base_dir / "data/etc"
    target = tmp_path / "over"
    etc_backup = console_workspace.catalog.backups(policy="etc")[0]
    restore.run(console_workspace, etc_backup["id"], str(target))
    victim = target / str(source).lstrip("/") / "hosts"
    victim.write_text("changed since the backup\n")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_catalog("etc")
        await pilot.pause()
        await _wizard_to_plan(app, pilot, target)
        screen = app.screen
        assert screen.overwrites == 1
        await pilot.press("ctrl+n")
        await pilot.pause()
        field = screen.query_one("#confirm-input", Input)
        assert field.display and field.has_focus
        field.value = "/wrong/target"
        await pilot.press("enter")
        await settle(app, pilot)
        assert screen.step == 4  # still confirming
        assert "nothing was written" in static_text(app, "#confirm-error")
        assert victim.read_text() == "changed since the backup\n"
        await pilot.press("escape")  # back keeps the choices
        await pilot.pause()
        assert screen.step == 3 and screen.target == str(target)
        await pilot.press("ctrl+n")
        await pilot.pause()
        screen.query_one("#confirm-input", Input).value = str(target)
        await pilot.press("enter")
        await settle(app, pilot, 0.2)
        await settle(app, pilot, 0.2)
        assert screen.step == 6
    assert victim.read_bytes() == (source / "hosts").read_bytes()


# ----- help, palette, read-only, themes, errors ---------------------------------------------


async def test_help_lists_every_command_from_the_registry(make_app):
    from insite_console.tui import commands

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        text = static_text(app, "#help-keys")
        for command in commands.COMMANDS:
            assert command.help in text
        await pilot.press("escape")
        assert app.current_mode == "dashboard" and type(app.screen).__name__ == "DashboardScreen"


async def test_palette_offers_actions_policies_and_backups(make_app, console_workspace):
    from insite_console.tui.commands import InsiteCommands

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        provider = InsiteCommands(app.screen)
        texts = [hit.text for hit in [h async for h in provider.discover()]]
        assert "Catalog (2)" in texts and "Policy etc: back up now" in texts
        backup_id = console_workspace.catalog.backups(policy="etc")[0]["id"]
        hits = [h async for h in provider.search(backup_id[:6])]
        assert any(backup_id in (h.text or "") for h in hits)


async def test_read_only_hides_every_write_action(make_app, console_workspace):
    from insite_console.tui import commands

    app = make_app(read_only=True)
    before = console_workspace.catalog.count_backups()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert "READ-ONLY" in app.sub_title
        await pilot.press("b")
        await pilot.press("4")
        await settle(app, pilot)
        assert app.current_mode == "dashboard" and not app.console_jobs
        await pilot.press("2")
        await pilot.pause()
        for command in commands.COMMANDS:
            if command.writes and command.scope in ("catalog", "app"):
                target = app.screen if command.scope == "catalog" else app
                assert target.check_action(command.action, ()) is False, command.id
        active = {binding.binding.action for binding in app.screen.active_bindings.values()
                  if app.screen.check_action(binding.binding.action, ()) is not False
                  and app.check_action(binding.binding.action, ()) is not False}
        assert not active & {"verify", "restore", "forget", "backup_now", "show_restore"}
        await pilot.press("d", "v", "r")
        await pilot.pause()
        assert type(app.screen).__name__ == "CatalogScreen"
        provider = commands.InsiteCommands(app.screen)
        texts = [hit.text for hit in [h async for h in provider.discover()]]
        assert not any("back up now" in t or t.startswith(("Verify", "Restore", "Forget")) for t in texts)
    assert console_workspace.catalog.count_backups() == before


async def test_theme_switches_at_run_time_and_unknown_theme_falls_back(make_app):
    app = make_app(theme="no-such-theme")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.theme == "insite-dark"
        assert any("not known" in n.message for n in app._notifications)
        await pilot.press("t")
        assert app.theme == "insite-light"
        await pilot.press("t")
        assert app.theme == "insite-16" and app.native_ansi_color


async def test_errors_are_messages_not_tracebacks(make_app, console_workspace, monkeypatch):
    monkeypatch.setenv("INSITE_PASSPHRASE", "the wrong passphrase")
    console_workspace._repos.clear()
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause(0.3)
        await settle(app, pilot)
        text = static_text(app, "#detail-manifest")
        assert "cannot read it" in text and "Traceback" not in text
        await pilot.press("b")
        await settle(app, pilot)
        failures = [n.message for n in app._notifications if n.severity == "error"]
        assert failures and "failed" in failures[-1] and "Traceback" not in failures[-1]


async def test_quit_asks_when_a_job_of_this_console_would_be_cancelled(slow_workspace):
    from insite_console.tui.app import InsiteApp

    app = InsiteApp(slow_workspace, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        app.start_backup("big")
        await pilot.pause(0.3)
        await pilot.press("q")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog"
        await pilot.press("escape")
        assert app.is_running
        for job in app.console_jobs.values():
            job.cancel.cancel()
        await settle(app, pilot)


async def test_detached_backup_runs_in_its_own_session(console_workspace):
    """The default: a backup started from the console is a child in a new session (no SIGHUP
    from the terminal reaches it) and is watched through the catalog."""
    from insite_console.tui.app import InsiteApp

    app = InsiteApp(console_workspace, theme="insite-dark", poll_seconds=0.2)
    assert app.detach_jobs
    async with app.run_test(size=(120, 40)) as pilot:
        job = app.start_backup("etc")
        assert job.detached and job.pid
        try:
            assert os.getsid(job.pid) != os.getsid(0)
        except ProcessLookupError:
            pass  # already finished
        for _ in range(150):
            await pilot.pause(0.1)
            if job.status != "running":
                break
        assert job.status == "succeeded", job.error
        await pilot.press("3")
        await pilot.pause(0.3)
        rows = keyed_rows(app.screen.query_one("#job-table", DataTable))
        assert rows[0]["origin"] == f"{who.user()}@{socket.gethostname()} · console" and rows[0]["status"] == "✓ ok"
        assert "this console (detached)" in static_text(app, "#job-facts")
    assert console_workspace.catalog.backups(policy="etc")[0]["id"] == job.result["id"]


def test_backup_table_pages_match_the_catalog_order_from_both_ends(console_workspace):
    """Pages in the second half are read in reverse and flipped: the order must be one total order,
    with every row exactly once."""
    from insite_console.catalog.db import _order_by
    from insite_console.tui.widgets.backup_table import SORTABLE, BackupTable

    rows = [(f"{i:016x}", "app_files" if i % 3 else "etc", "app_files", "files", "local",
             ("full", "incremental")[i % 2], ("succeeded", "failed")[i % 5 == 0],
             f"2025-01-{1 + i % 20:02d}T00:00:00Z", 1000 + i % 7) for i in range(900)]
    db = console_workspace.catalog.db
    db.executemany("INSERT INTO backups (id, policy, source, source_type, storage, type, status, started_at, "
                   "bytes_read) VALUES (?,?,?,?,?,?,?,?,?)", rows)
    table = BackupTable(console_workspace.catalog)
    for column in [c.sort for c in SORTABLE]:
        for descending in (True, False):
            for search in ("", "etc"):
                table.sort_column, table.descending, table.search = column, descending, search
                table._pages.clear()
                table.total = console_workspace.catalog.count_backups(search=search or None)
                where, args = console_workspace.catalog.backup_filter(None, None, None, search or None)
                direction = "DESC" if descending else "ASC"
                expected = [row[0] for row in db.execute(
                    f"SELECT id FROM backups{where} ORDER BY {_order_by(column, direction)}", args)]
                assert len(expected) == table.total
                got = [table.row(i)["id"] for i in range(table.total)]
                first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
                assert got == expected, (column, descending, search, first, got[first - 1:first + 2], expected[first - 1:first + 2])


def test_theme_choice_follows_the_terminal_and_no_color():
    from insite_console.tui import themes

    assert themes.default_theme({"TERM": "xterm-256color"}) == "insite-dark"
    assert themes.default_theme({"TERM": "xterm", "COLORTERM": "truecolor"}) == "insite-dark"
    assert themes.default_theme({"TERM": "linux"}) == "insite-16"
    assert themes.default_theme({"TERM": "xterm-256color", "NO_COLOR": "1"}) == "insite-16"
    loaded = themes.load_themes()
    assert {"insite-dark", "insite-light", "insite-16"} <= set(loaded)
    assert loaded["insite-16"].ansi


async def test_keys_can_be_remapped_from_the_config(make_app, console_workspace):
    console_workspace.config.console["keymap"] = {"backup": "x"}
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("b")
        await settle(app, pilot)
        assert not app.console_jobs
        await pilot.press("x")
        await settle(app, pilot)
        assert [job.kind for job in app.console_jobs.values()] == ["backup"]


def test_the_console_refuses_to_run_without_a_terminal(console_workspace, monkeypatch):
    import io

    from insite_console.errors import UsageError
    from insite_console.tui.app import run_console

    monkeypatch.setattr("sys.stdin", io.StringIO())
    with pytest.raises(UsageError, match="needs a terminal"):
        run_console(str(console_workspace.config.path))


async def test_the_mouse_selects_sorts_and_opens(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.table
        await pilot.click("#backups", offset=(5, 2))  # the second row
        await pilot.pause()
        assert table.cursor == 1
        await pilot.click("#backups", offset=(20, 0))  # the Started header: reverse the order
        await pilot.pause()
        assert table.sort_column == "started_at" and not table.descending
        await pilot.click("#backups", offset=(5, 1), times=2)
        await pilot.pause(0.3)
        assert type(app.screen).__name__ == "BackupDetailScreen"


async def test_rpo_breaches_and_failures_raise_alerts(console_workspace, monkeypatch):
    from insite_console.tui.app import InsiteApp

    monkeypatch.setenv("INSITE_FAKE_NOW", "2099-01-01T00:00:00Z")  # long after the last backups
    app = InsiteApp(console_workspace, theme="insite-dark", detach_jobs=False, poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        alerts = [n.message for n in app._notifications if "RPO breach" in n.message]
        assert any("policy app_files" in a for a in alerts) and any("policy etc" in a for a in alerts)
        await pilot.pause(0.5)
        assert len([n for n in app._notifications if "RPO breach" in n.message]) == 2  # once per change


async def test_cancel_a_detached_job_signals_its_process(console_workspace, tmp_path, monkeypatch):
    from tests.tui.conftest import SLOW_CHUNKS
    from insite_console.tui.app import InsiteApp

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_CHUNKS)
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("INSITE_TEST_SLOW_CHUNK", "1.0")
    for i in range(8):  # eight new chunks at a second each: the job is still running when cancelled
        (console_workspace.config.base_dir / f"data/etc/new{i}.bin").write_bytes(os.urandom(50_000))
    app = InsiteApp(console_workspace, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        job = app.start_backup("etc")
        await pilot.press("3")
        screen = app.screen
        for _ in range(300):  # the job takes the selection when it starts running (a loaded machine: later)
            await pilot.pause(0.1)
            if job.run_id and app.job_views.get(job.run_id) and app.job_views[job.run_id].running \
                    and screen.selected_id() == job.run_id:
                break
        assert screen.selected_id() == job.run_id
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("tab", "enter")
        for _ in range(300):
            await pilot.pause(0.1)
            if job.status != "running":
                break
        assert job.status == "cancelled", job.error
    run = console_workspace.catalog.run(job.run_id)
    assert run["status"] == "cancelled" and run["origin"] == "console"  # the child knows who started it
    assert run["cancelled_by"] == f"{who.user()}@{socket.gethostname()}"  # recorded before the signal


async def test_an_unreadable_catalog_is_reported_once_not_crashed_on(make_app, monkeypatch):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        catalog = app.workspace.catalog

        def broken(*args, **kwargs):
            raise __import__("sqlite3").OperationalError("database is locked")

        with monkeypatch.context() as patch:
            patch.setattr(catalog, "runs", broken)
            await pilot.pause(0.7)
            assert app.is_running
            assert len([n for n in app._notifications if "cannot read the catalog" in n.message]) == 1
        await pilot.pause(0.4)
        assert any("readable again" in n.message for n in app._notifications)
