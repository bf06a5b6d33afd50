"""The restore wizard's input (issue 9, "Then"): times as operators type them, the focus on
each step's first field, and read-only mode's notice for a refused key."""

from __future__ import annotations

from textual.widgets import Input, OptionList

from insite_console import backup

from tests.tui.test_console import settle, static_text
from tests.tui.test_truth import _two_points


async def _type_at(app, pilot, text: str):
    await pilot.press("4")
    await settle(app, pilot)
    app.screen.query_one("#at", Input).focus()
    await pilot.pause()
    await pilot.press(*text, "tab")
    await settle(app, pilot)
    return app.screen


async def test_a_relative_time_picks_the_point_before_it(make_app, console_workspace, monkeypatch):
    early, late = _two_points(console_workspace, monkeypatch)  # 19:00 and 19:11
    monkeypatch.setenv("INSITE_FAKE_NOW", "2030-01-01T21:10:00Z")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _type_at(app, pilot, "-2h")
        assert screen.backup["id"] == early
        assert "You asked for 2030-01-01 19:10:00 UTC; restore point " + early in static_text(app, "#window")


async def test_a_time_without_zone_is_local_and_the_zone_is_shown(make_app, console_workspace, monkeypatch):
    early, late = _two_points(console_workspace, monkeypatch)
    monkeypatch.setenv("TZ", "Europe/Paris")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _type_at(app, pilot, "20:05")  # 19:05 UTC
        assert "Europe/Paris" in screen.query_one("#at", Input).placeholder
        assert screen.backup["id"] == early
        assert "You asked for 2030-01-01 19:05:00 UTC (20:05:00 Europe/Paris)" in static_text(app, "#window")


async def test_an_unreadable_time_lists_the_forms(make_app, console_workspace, monkeypatch):
    _two_points(console_workspace, monkeypatch)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _type_at(app, pilot, "teatime")
        text = static_text(app, "#window")
        assert screen.at is None and "use one of" in text and "-2h" in text and "yesterday 14:00" in text
        assert "isoformat" not in text


async def test_each_step_starts_on_its_first_field(make_app, console_workspace):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        screen, focused = app.screen, []
        for step in range(5):
            await settle(app, pilot, 0.3)
            focused.append((screen.step, app.focused.id if app.focused else None))
            if step < 4:  # not on the confirmation: that would start the restore
                await pilot.press("ctrl+n")
        assert focused == [(0, "source"), (1, "parts-tree"), (2, "where"), (3, "plan-table"), (4, "next")]
        await pilot.press("escape", "escape", "escape", "escape")  # back to the first step
        await settle(app, pilot)
        assert screen.step == 0 and app.focused.id == "source"


async def test_read_only_answers_a_refused_key_with_a_notice(make_app, console_workspace):
    app = make_app(read_only=True)
    notices: list[str] = []  # every notice shown (a toast expires after 3 s: a loaded machine lost them)
    shown = app.notify
    app.notify = lambda message, *args, **kwargs: (notices.append(message), shown(message, *args, **kwargs))[1]
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("b")  # back up now: refused
        await pilot.pause()
        assert "read-only mode: Backup is not available" in notices, notices
        await pilot.press("4")  # the restore wizard: refused as well
        await pilot.pause()
        assert app.current_mode == "dashboard" and not app.console_jobs
        assert len([n for n in notices if n.startswith("read-only mode:")]) == 2, notices
        await pilot.press("1", "2")  # allowed keys: no notice
        await pilot.pause()
        assert len([n for n in notices if n.startswith("read-only mode:")]) == 2, notices


async def test_clearing_an_unreadable_time_clears_its_error(make_app, console_workspace, monkeypatch):
    """Found by hand: after a bad time, emptying the field left '✗ point in time: …' on screen
    (and on returning to the wizard), though the list choice then applied."""
    _two_points(console_workspace, monkeypatch)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _type_at(app, pilot, "teatime")
        assert "✗ point in time" in static_text(app, "#window")
        screen.query_one("#at", Input).focus()
        await pilot.pause()
        await pilot.press(*["backspace"] * len("teatime"), "tab")
        await settle(app, pilot)
        text = static_text(app, "#window")
        assert "✗" not in text and "Restorable window:" in text and "restore point(s)" in text


async def test_a_backup_taken_while_the_wizard_is_open_is_listed_and_picked(make_app, console_workspace, monkeypatch):
    """Found by a tmux walk: the list was read once, so a backup that finished later (by cron,
    in another shell) was missing, and a time typed after it picked the older point."""
    early, late = _two_points(console_workspace, monkeypatch)  # 19:00 and 19:11
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        monkeypatch.setenv("INSITE_FAKE_NOW", "2030-01-01T19:30:00Z")
        newest = backup.run(console_workspace, "app_files", "full")["id"]  # as another process would
        monkeypatch.setenv("INSITE_FAKE_NOW", "2030-01-01T19:40:00Z")
        screen = await _type_at(app, pilot, "2030-01-01T19:35:00Z")
        assert screen.backup["id"] == newest, (early, late, newest)
        assert "restore point " + newest in static_text(app, "#window")
        ids = [option.id for option in screen.query_one("#points", OptionList).options]
        assert ids[:3] == [newest, late, early], ids


async def test_another_place_takes_the_path_typed_right_after_it(make_app, console_workspace, tmp_path):
    """Found by a tmux walk: after choosing 'Another place' the focus stayed on the choices, so
    the path typed next was taken as keys of the screen ('2' opened the catalog)."""
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        await pilot.press("ctrl+n", "ctrl+n")  # what, parts: everything
        await settle(app, pilot)
        screen = app.screen
        assert screen.step == 2 and app.focused.id == "where"
        await pilot.press("down", "down", "enter", *"/tmp/r2")  # no pause: typed as one burst
        await settle(app, pilot)
        assert app.current_mode == "restore" and screen.where_mode == "custom"
        assert screen.query_one("#target", Input).value == "/tmp/r2"  # the suggestion is replaced
