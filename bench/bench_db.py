"""Database backup benchmark: insite-console against the bare tools, in the same run.

    python bench/bench_db.py                 # pgbench scale 30 (~450 MB), 1M Redis keys
    python bench/bench_db.py --scale 5 --keys 200000   # quicker

PostgreSQL (a throwaway cluster, as the `postgres` user; needs root for runuser):
  - logical backup time vs a bare `pg_dump -Fc` to /dev/null (goal: at most 1.2x)
  - stored bytes of a second backup of the unchanged database (goal: under 10% of the first)
  - restore time vs a bare `pg_restore` of a `pg_dump -Fc` file
Redis (a throwaway redis-server): RDB backup of N keys vs a bare `redis-cli --rdb`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("INSITE_PASSPHRASE", "bench passphrase")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def workspace(directory: Path, source: str):
    from insite_console.workspace import Workspace

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(
        '[catalog]\npath = "state/catalog.sqlite"\n\n[storage.local]\ntype = "local"\npath = "repo"\n\n'
        + source
        + '\n[policy.bench]\nsource = "bench"\nstorage = "local"\ntype = "full"\n')
    ws = Workspace.load(directory / "config.toml")
    ws.init_repository("local")
    return ws


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def bench_postgres(scale: int, work: Path) -> list[tuple[str, str]]:
    from insite_console import backup, restore
    from tests import pg_servers as P

    if P.BINDIR is None or P.PG_USER is None or os.geteuid() != 0:
        return [("postgresql", "skipped (needs PostgreSQL binaries, a postgres user and root)")]
    base = tempfile.mkdtemp(prefix="insite-bench-pg-")
    os.chmod(base, 0o711)
    os.chown(base, P.PG_USER.pw_uid, P.PG_USER.pw_gid)
    root = P._make_dir(base, "c")
    datadir = os.path.join(root, "data")
    P.as_postgres([os.path.join(P.BINDIR, "initdb"), "-D", datadir, "-U", "postgres", "--auth=trust", "--no-sync"],
                  capture_output=True, check=True)
    cluster = P.PgCluster(datadir, P.free_port(), P._make_dir(root, "sock"), os.path.join(root, "log"))
    with open(os.path.join(datadir, "postgresql.conf"), "a") as handle:
        handle.write("\nshared_buffers = 256MB\nmax_wal_size = 4GB\n")
    cluster.start()
    rows = []
    try:
        cluster.sql("CREATE DATABASE bench")
        env = {**os.environ}
        print(f"pgbench -i -s {scale} ...", flush=True)
        t_init, _ = timed(lambda: subprocess.run(
            [os.path.join(P.BINDIR, "pgbench"), "-i", "-s", str(scale), "-q", "-h", "127.0.0.1", "-p",
             str(cluster.port), "-U", "postgres", "bench"], check=True, capture_output=True, env=env))
        size = cluster.sql("SELECT pg_database_size('bench')")[0][0]
        rows.append(("pgbench database", f"scale {scale}, {mib(size)} (init {t_init:.1f}s)"))
        dsn = cluster.dsn_for("bench")
        pg_dump = os.path.join(P.BINDIR, "pg_dump")
        t_bare, _ = timed(lambda: subprocess.run(f"{pg_dump} -Fc -d '{dsn}' > /dev/null", shell=True, check=True))
        ws = workspace(work / "pg", f'[source.bench]\ntype = "postgresql"\ndsn = "{dsn}"\n')
        t_ours, first = timed(lambda: backup.run(ws, "bench"))
        t_second, second = timed(lambda: backup.run(ws, "bench"))
        rows.append(("bare pg_dump -Fc > /dev/null", f"{t_bare:.1f}s"))
        rows.append(("insite-console logical backup", f"{t_ours:.1f}s = {t_ours / t_bare:.2f}x bare (goal <= 1.2x); "
                                                      f"read {mib(first['bytes_read'])}, stored {mib(first['bytes_stored'])}"))
        rows.append(("second backup, unchanged", f"{t_second:.1f}s, stored {mib(second['bytes_stored'])} = "
                                                 f"{100 * second['bytes_stored'] / max(first['bytes_stored'], 1):.1f}% "
                                                 "of the first (goal < 10%)"))
        dump_file = work / "bench.pgdump"
        subprocess.run([pg_dump, "-Fc", "-d", dsn, "-f", str(dump_file)], check=True)
        cluster.sql("CREATE DATABASE bare_restore")
        cluster.sql("CREATE DATABASE our_restore")
        t_bare_restore, _ = timed(lambda: subprocess.run(
            [os.path.join(P.BINDIR, "pg_restore"), "-d", cluster.dsn_for("bare_restore"), str(dump_file)], check=True))
        t_our_restore, _ = timed(lambda: restore.run(ws, first["id"], cluster.dsn_for("our_restore")))
        rows.append(("bare pg_restore (file, 1 job)", f"{t_bare_restore:.1f}s"))
        rows.append(("insite-console restore (stream, 1 job)",
                     f"{t_our_restore:.1f}s = {t_our_restore / t_bare_restore:.2f}x bare"))
        cluster.sql("CREATE DATABASE bare_restore_j2")
        cluster.sql("CREATE DATABASE our_restore_j2")
        t_bare_j2, _ = timed(lambda: subprocess.run(
            [os.path.join(P.BINDIR, "pg_restore"), "-j", "2", "-d", cluster.dsn_for("bare_restore_j2"),
             str(dump_file)], check=True))
        t_our_j2, _ = timed(lambda: restore.run(ws, first["id"], cluster.dsn_for("our_restore_j2"),
                                                options={"jobs": 2}))
        rows.append(("bare pg_restore -j 2 (file)", f"{t_bare_j2:.1f}s"))
        rows.append(("insite-console restore (jobs = 2, spooled)",
                     f"{t_our_j2:.1f}s = {t_our_j2 / t_bare_j2:.2f}x bare"))
        ws.close()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    return rows


def bench_redis(keys: int, work: Path) -> list[tuple[str, str]]:
    from insite_console import backup
    from tests.redis_servers import REDIS_SERVER, _start

    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        return [("redis", "skipped (redis-server / redis-cli not installed)")]
    base = tempfile.mkdtemp(prefix="insite-bench-redis-")
    server = _start(base, enable_debug_command="yes", repl_diskless_sync_delay="0")
    rows = []
    try:
        client = server.client()
        client.execute_command("DEBUG", "POPULATE", keys, "key", 32)
        rows.append(("redis keys", f"{client.dbsize()} (DEBUG POPULATE, 32-byte values)"))
        out = work / "bare.rdb"
        t_bare, _ = timed(lambda: subprocess.run(["redis-cli", "-p", str(server.port), "--rdb", str(out)],
                                                 check=True, capture_output=True))
        ws = workspace(work / "redis", f'[source.bench]\ntype = "redis"\nurl = "{server.url}"\n')
        t_ours, done = timed(lambda: backup.run(ws, "bench"))
        rows.append(("bare redis-cli --rdb", f"{t_bare:.2f}s, {mib(out.stat().st_size)}"))
        rows.append(("insite-console RDB backup", f"{t_ours:.2f}s = {t_ours / t_bare:.2f}x bare; "
                                                  f"stored {mib(done['bytes_stored'])}"))
        ws.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=30, help="pgbench scale (30 = ~450 MB)")
    parser.add_argument("--keys", type=int, default=1_000_000, help="Redis keys")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-redis", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="insite-bench-"))
    rows: list[tuple[str, str]] = []
    try:
        if not args.skip_postgres:
            rows += bench_postgres(args.scale, work)
        if not args.skip_redis:
            rows += bench_redis(args.keys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"\ninsite-console database benchmark ({os.cpu_count()} cores)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
