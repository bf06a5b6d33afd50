"""Monitoring at scale: `status` and `metrics` on a catalog of 100,000 runs.

    python bench/bench_status.py [--runs 100000] [--policies 4] [--repeat 5] [--keep]

Builds a workspace (local storage, a real repository) whose catalog holds `--runs` backup runs
spread over `--policies` policies (one in ten failed, each with its backup row and a run row),
a deep verification for every tenth backup, a scheduled verify and a restore test run per day
for each policy, and some drills, as a scheduler writing every 15 minutes for years would leave
it. Then measures, best of `--repeat`: `status.overview` with the storage check (what `status`
computes) and `metrics.exposition` in process, and the wall time of the `status --json` and
`metrics` commands (interpreter start included). Goals (issue 11): status under 200 ms,
metrics under 300 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "bench passphrase"


def build(root: Path, runs: int, policies: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from insite_console.workspace import Workspace

    source = root / "src"
    source.mkdir()
    (source / "a.txt").write_text("hello")
    tables = "".join(textwrap.dedent(f"""
        [policy.p{i}]
        source = "tree"
        storage = "local"
        schedule = "*/15 * * * *"
        rpo = "15m"
        verify_every = "1d"
        verify_schedule = "0 3 * * *"
        restore_test_schedule = "0 4 * * *"
        retention = {{ keep_last = 2 }}
        """) for i in range(policies))
    config = root / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [encryption]
        passphrase_env = "INSITE_PASSPHRASE"

        [storage.local]
        type = "local"
        path = "repo"

        [source.tree]
        type = "files"
        paths = ["{source}"]

        [dr]
        cadence = "90d"
        """) + tables)
    os.environ["INSITE_PASSPHRASE"] = PASSPHRASE
    ws = Workspace.load(config)
    ws.init_repository("local")
    db = ws.catalog.db
    now = datetime.now(timezone.utc)
    backups, run_rows, verifications = [], [], []
    for n in range(runs):
        policy = f"p{n % policies}"
        started = now - timedelta(minutes=15 * (runs - n) // policies)
        at = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        done = (started + timedelta(seconds=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
        precise = started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        status = "failed" if n % 10 == 7 else "succeeded"
        backup_id = f"{n:016x}"
        backups.append((backup_id, policy, "tree", "files", "local", "incremental", status, at, done, 1 << 20,
                        4096, 10, None, "disk on fire" if status == "failed" else None, None, backup_id, "{}",
                        precise, "bench"))
        run_rows.append((backup_id, "backup", policy, status, 1, "bench", precise, precise, None, "done"))
        if n % 10 == 3:
            verifications.append((f"v{n:015x}", backup_id, policy, "local", 1, "ok", done, done, 10, 1 << 20, "[]"))
    days = runs // policies // 96 + 1
    for day in range(days):
        for i in range(policies):
            for kind, hour in (("scheduled_verify", 3), ("restore_test", 4)):
                at = (now - timedelta(days=days - day) + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                run_rows.append((f"{kind[0]}{i}{day:014x}", kind, f"p{i}", "succeeded", 1, "bench", at, at, None, "done"))
    db.execute("BEGIN")
    db.executemany("INSERT INTO backups (id, policy, source, source_type, storage, type, status, started_at, "
                   "finished_at, bytes_read, bytes_stored, files, parent_id, error, repo_id, run_id, info, "
                   "started_at_precise, host) VALUES (" + ", ".join("?" * 19) + ")", backups)
    db.executemany("INSERT INTO runs (id, kind, subject, status, pid, host, started_at, finished_at, error, phase) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", run_rows)
    db.executemany("INSERT INTO verifications (id, backup_id, policy, storage, deep, status, started_at, "
                   "finished_at, objects, bytes, problems) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", verifications)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    ws.catalog.scheduler_beat(now.strftime("%Y-%m-%dT%H:%M:%SZ"), 30)
    ws.close()
    return config


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--policies", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="insite-bench-status-"))
    try:
        started = time.perf_counter()
        config = build(root, args.runs, args.policies)
        print(f"built a catalog of {args.runs:,} backup runs ({args.policies} policies) in "
              f"{time.perf_counter() - started:.1f}s at {root}")
        from insite_console import metrics, status
        from insite_console.workspace import Workspace

        ws = Workspace.load(config)
        overview = best(lambda: status.overview(ws, check_storage=True), args.repeat)
        exposition = best(lambda: metrics.exposition(ws), args.repeat)
        ws.close()
        # as installed: with bytecode caches (kept apart from the source tree), warmed once
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        command = [sys.executable, "-m", "insite_console", "-c", str(config)]

        def cli(*extra: str):
            return lambda: subprocess.run(command + list(extra), capture_output=True, env=env)

        cli("status", "--json")(), cli("metrics")()
        cli_status = best(cli("status", "--json"), args.repeat)
        cli_metrics = best(cli("metrics"), args.repeat)
        bare = best(lambda: subprocess.run([sys.executable, "-c", "import insite_console.cli"], env=env), args.repeat)
        print(f"{'status.overview(check_storage=True), in process':<52} {overview * 1000:7.1f} ms  (goal 200)")
        print(f"{'metrics.exposition, in process':<52} {exposition * 1000:7.1f} ms  (goal 300)")
        print(f"{'`status --json`, wall time of the command':<52} {cli_status * 1000:7.1f} ms")
        print(f"{'`metrics`, wall time of the command':<52} {cli_metrics * 1000:7.1f} ms")
        print(f"{'(python start + import insite_console.cli)':<52} {bare * 1000:7.1f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
