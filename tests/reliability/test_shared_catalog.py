"""The scheduler and the console on one catalog: a real `insite-console schedule` process runs
its policies while the console (Pilot, the same catalog and repository) refreshes and runs a
backup of its own. Neither sees `database is locked`, both runs are listed as they ended, and the
console shows the scheduler as running."""

from __future__ import annotations

import asyncio
import html
import subprocess
import sys
import time

from insite_console.tui.app import InsiteApp
from insite_console.workspace import Workspace
from tests.reliability.checks import MIB, make_workspace, write_random


async def test_scheduler_and_console_share_one_catalog(tmp_path, figures):
    extra = '''
[scheduler]
tick_seconds = 1
catch_up = true

[source.other]
type = "files"
paths = ["other"]

[policy.other]
source = "other"
storage = "local"
rpo = "1h"
'''
    helper = make_workspace(tmp_path / "ws", extra=extra)
    (helper.root / "other").mkdir()
    for i in range(3):
        write_random(helper.source / f"f{i}.bin", 2 * MIB, seed=60 + i)
        write_random(helper.root / "other" / f"g{i}.bin", 2 * MIB, seed=70 + i)
    helper.close()
    scheduler = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(helper.config), "schedule"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ws = Workspace.load(helper.config)
    try:
        app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not ws.catalog.backups(policy="tree", status="succeeded"):
                await asyncio.sleep(0.2)  # the console keeps refreshing from the catalog meanwhile
            assert ws.catalog.backups(policy="tree", status="succeeded"), "the scheduler ran nothing"
            await pilot.press("b")  # the dashboard's first policy: other
            while time.monotonic() < deadline and not ws.catalog.backups(policy="other", status="succeeded"):
                await asyncio.sleep(0.2)
            await pilot.press("1")  # the dashboard
            await asyncio.sleep(1.5)  # a refresh or two
            await pilot.pause()
            screen = html.unescape(app.export_screenshot()).replace("\xa0", " ")
        assert ws.catalog.backups(policy="other", status="succeeded"), "the console's backup did not finish"
        assert "running on" in screen  # the scheduler's heartbeat, as the console shows it
        events = [e["message"] for e in ws.catalog.events(limit=500)]
        assert not [m for m in events if "locked" in m.lower()], events
        assert not [b for b in ws.catalog.backups() if b["status"] not in ("succeeded",)], ws.catalog.backups()
        figures["backups by the scheduler"] = len(ws.catalog.backups(policy="tree"))
        figures["backups by the console"] = len(ws.catalog.backups(policy="other"))
    finally:
        scheduler.terminate()
        output, _ = scheduler.communicate(timeout=30)
        ws.close()
    assert "Traceback" not in output and "locked" not in output.lower(), output
