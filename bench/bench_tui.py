"""Console benchmarks: first paint, a 100k-backup catalog, and progress under a running backup.

    .venv/bin/python bench/bench_tui.py [--rows 100000] [--data-mib 256]

Prints a table and writes bench/results/tui.json. Figures (2 cores, this machine) go in
the README (section "The console").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = """
[catalog]
path = "state/catalog.sqlite"
[encryption]
passphrase_env = "INSITE_PASSPHRASE"
[storage.local]
type = "local"
path = "backups"
[source.data]
type = "files"
paths = ["data"]
[policy.data]
source = "data"
storage = "local"
schedule = "0 * * * *"
type = "full"
rpo = "1h"
"""


def make_workspace(root: Path, data_mib: int):
    from insite_console.workspace import Workspace

    (root / "data").mkdir(parents=True)
    block = os.urandom(1 << 20)
    for i in range(data_mib):
        # half compressible, half not: a realistic mix for zstd
        (root / "data" / f"f{i:04d}.bin").write_bytes(block[: 512 << 10] + bytes(512 << 10) if i % 2 else os.urandom(1 << 20))
    (root / "config.toml").write_text(CONFIG)
    ws = Workspace.load(root / "config.toml")
    ws.init_repository("local")
    return ws


def fill_catalog(ws, rows: int) -> None:
    db = ws.catalog.db
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO backups (id, policy, source, source_type, storage, type, status, started_at, finished_at, "
        "bytes_read, bytes_stored, files) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        ((f"{i:016x}", "data", "data", "files", "local", "incremental", "succeeded",
          f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
          f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:30Z",
          1000 + i, 500 + i, 3) for i in range(rows)))
    db.execute("COMMIT")


def rss_mib() -> float:
    """Current resident memory (not the peak: the backup benchmark ran before)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


async def bench_catalog(ws) -> dict:
    from insite_console.tui.app import InsiteApp

    app = InsiteApp(ws, theme="insite-dark", detach_jobs=False, poll_seconds=3600)
    result = {}
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        before = rss_mib()
        started = time.perf_counter()
        await pilot.press("2")
        await pilot.pause()
        result["catalog_show_s"] = time.perf_counter() - started
        table = app.screen.table
        started = time.perf_counter()
        await pilot.press("end")
        await pilot.pause()
        result["catalog_scroll_to_end_s"] = time.perf_counter() - started
        assert table.cursor == table.total - 1
        started = time.perf_counter()
        for _ in range(100):
            await pilot.press("pageup")
        await pilot.pause()
        result["catalog_100_pageups_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await pilot.press("slash", *"0000f", "enter")
        await pilot.pause(0.3)
        result["catalog_filter_s"] = time.perf_counter() - started - 0.3
        result["catalog_rows"] = table.total
        result["catalog_pages_read"] = table.fetches
        result["catalog_rss_growth_mib"] = rss_mib() - before
        result["catalog_rss_mib"] = rss_mib()
    return result


async def bench_progress(ws, data_mib: int, repeats: int = 3) -> dict:
    """A full-speed backup alone, then the same started from the console (thread worker,
    progress messages, the Live jobs screen showing it), alternated; medians reported."""
    from insite_console import backup
    from insite_console.events import Progress
    from insite_console.tui.app import InsiteApp
    from insite_console.tui.messages import JobProgress
    from insite_console.workspace import Workspace

    def fresh_repository() -> None:  # the same data again must not be deduplicated away
        shutil.rmtree(ws.config.base_dir / "backups")
        ws._repos.clear()
        ws.init_repository("local")

    backup.run(ws, "data", "full")  # warm-up: page cache, imports
    alone, in_console, handled_counts = [], [], []
    for _ in range(repeats):
        fresh_repository()
        started = time.perf_counter()
        own = Workspace(ws.config)  # as the console does: a workspace per job
        backup.run(own, "data", "full")
        own.close()
        alone.append(time.perf_counter() - started)
        fresh_repository()
        handled = []
        app = InsiteApp(ws, theme="insite-dark", detach_jobs=False, poll_seconds=1)
        hook = lambda m: handled.append(m) if isinstance(m, JobProgress) else None  # noqa: E731
        async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
            await pilot.press("3")
            started = time.perf_counter()
            job = app.start_backup("data", "full")
            await app.workers.wait_for_complete()
            in_console.append(time.perf_counter() - started)
            handled_counts.append(len(handled))
    # A flood: 200k progress messages from a thread (what an unthrottled engine would send),
    # coalesced by can_replace.
    app = InsiteApp(ws, theme="insite-dark", detach_jobs=False, poll_seconds=1)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        job = app._new_job("backup", "data", detached=False)
        flood = Progress(operation="backup", phase="reading", bytes_done=1, bytes_total=2)
        started = time.perf_counter()

        def post_many():
            for _ in range(200_000):
                app.post_message(JobProgress(job.key, flood))

        thread = threading.Thread(target=post_many)
        thread.start()
        while thread.is_alive():
            await pilot.pause(0.01)
        await pilot.pause()
        flood_seconds = time.perf_counter() - started
    alone_s, console_s = statistics.median(alone), statistics.median(in_console)
    handled = statistics.median(handled_counts)
    return {"data_mib": data_mib, "backup_alone_s": alone_s, "backup_in_console_s": console_s,
            "backup_runs_alone": alone, "backup_runs_in_console": in_console,
            "backup_slowdown_pct": 100 * (console_s - alone_s) / alone_s,
            "progress_messages_handled": handled, "progress_messages_per_s": handled / console_s,
            "flood_200k_messages_s": flood_seconds}


def bench_first_paint(config: Path) -> dict:
    """The real console in tmux: from the command to the dashboard on screen."""
    if shutil.which("tmux") is None:
        return {"first_paint_s": None}
    console = Path(sys.executable).with_name("insite-console")
    times = []
    for _ in range(5):
        socket = f"insite-bench-{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-x", "120", "-y", "40",
                        f"{console} -c {config}"], check=True)
        try:
            while time.perf_counter() - started < 20:
                screen = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p"], capture_output=True,
                                        text=True).stdout
                if "Policy health" in screen and "Recent events" in screen and "data" in screen:
                    times.append(time.perf_counter() - started)
                    break
                time.sleep(0.01)
        finally:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    times.sort()
    return {"first_paint_s": times[len(times) // 2] if times else None, "first_paint_runs": times}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data-mib", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("INSITE_PASSPHRASE", "bench-passphrase")
    results = {}
    with tempfile.TemporaryDirectory(prefix="insite-bench-") as tmp:
        ws = make_workspace(Path(tmp) / "ws", args.data_mib)
        results.update(asyncio.run(bench_progress(ws, args.data_mib)))
        results.update(bench_first_paint(ws.config.path))
        fill_catalog(ws, args.rows)
        results.update(asyncio.run(bench_catalog(ws)))
        ws.close()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tui.json").write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        print(f"{key:32} {value:.3f}" if isinstance(value, float) else f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
