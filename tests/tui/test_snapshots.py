"""Snapshot tests: every screen at 80x24 and 120x40, in the default theme and the 16-colour
theme, over a workspace with a fixed clock, fixed ids and a fixed host (conftest.py).

Update the baselines after an intended change with
`pytest tests/tui/test_snapshots.py --snapshot-update` and review the SVGs."""

from __future__ import annotations

import pytest

SCREENS = {
    "dashboard": [],
    "catalog": ["2"],
    "jobs": ["3"],
    "restore": ["4"],
    "help": ["question_mark"],
    "history": ["6"],
    "trends": ["p"],
}
# the drills screen has its own 80x24 and 120x40 snapshots (test_drills.py), here only at 60
NARROW_ONLY = {"drills": ["5"]}
SIZES = [(80, 24), (120, 40)]
THEMES = ["insite-dark", "insite-16"]


async def _settle(pilot) -> None:
    app = pilot.app
    await pilot.pause(0.3)  # the catalog's detail pane is debounced
    await app.workers.wait_for_complete()
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


def _seed_history(ws) -> None:
    """Two restores (one over production, with its reason; one that failed), as restore.run
    records them; only the history screen's snapshots have them."""
    etc = ws.catalog.backups(policy="etc")[0]["id"]
    common = {"backup_id": etc, "policy": "etc", "user": "operator", "host": "bastion-1", "dry_run": 0}
    ws.catalog.insert_restore({**common, "id": "00000000000000a1", "target": "/", "status": "succeeded",
                               "files": 2, "bytes_written": 41, "started_at": "2026-11-27T09:20:00Z",
                               "finished_at": "2026-11-27T09:21:07Z", "origin": "console", "includes": [],
                               "over_source": 1, "reason": "INC-4711: hosts file overwritten by a deploy"})
    ws.catalog.insert_restore({**common, "id": "00000000000000a2", "target": "/srv/restores/etc",
                               "status": "failed", "started_at": "2026-11-27T09:25:00Z",
                               "finished_at": "2026-11-27T09:25:02Z", "origin": "cli", "includes": ["**/hosts"],
                               "error": "local: cannot read data/5e/5e3f…: Input/output error"})


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen(snap_compare, snapshot_workspace, screen, size, theme):
    from insite_console.tui.app import InsiteApp

    # alerts off: a toast's timing would make the picture unstable (alerts have their own test)
    if screen == "history":
        _seed_history(snapshot_workspace)
    app = InsiteApp(snapshot_workspace, theme=theme, detach_jobs=False, poll_seconds=3600, alerts=False)

    async def run_before(pilot) -> None:
        await pilot.pause()
        for key in {**SCREENS, **NARROW_ONLY}[screen]:
            await pilot.press(key)
            await _settle(pilot)
        await _settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


NARROW = ["dashboard", "catalog", "jobs", "restore", "history", "trends", "help", "drills"]


@pytest.mark.parametrize("screen", NARROW)
def test_screen_at_60_columns(snap_compare, snapshot_workspace, screen):
    """The main screens on a 60-column terminal (a split tmux pane), in the default theme."""
    test_screen(snap_compare, snapshot_workspace, screen, (60, 24), "insite-dark")
