"""Throwaway PostgreSQL 15 clusters for tests: `from tests.pg_servers import *`.

Clusters run as the `postgres` user (pg_ctl refuses root) on a free loopback port, with the
socket in their own directory; they never touch the machine's own server on 5432 and are
stopped by their own pid (`pg_ctl stop` on their data directory). Everything lives in a
directory we create with mkdtemp and hand to postgres; we open no other path.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import pytest

from tests.redis_servers import free_port

__all__ = ["PgCluster", "pg_bindir", "pg_factory", "pg_cluster", "needs_pg", "as_postgres", "pg_work_dir",
           "postgres_can_reach"]


def pg_bindir() -> str | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if os.path.exists(os.path.join(out, "initdb")):
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


BINDIR = pg_bindir()


def _postgres_user():
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


PG_USER = _postgres_user()
needs_pg = pytest.mark.skipif(BINDIR is None or PG_USER is None or os.geteuid() != 0,
                              reason="needs PostgreSQL binaries, a postgres user and root")


def as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command as the postgres user (runuser when root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--"] + args
    return subprocess.run(args, **kwargs)


def postgres_can_reach(path: str) -> bool:
    """Can the postgres user traverse to (and read) `path`?"""
    result = as_postgres(["test", "-r", path], capture_output=True)
    return result.returncode == 0


@dataclass
class PgCluster:
    datadir: str
    port: int
    sockdir: str
    log: str
    extra: dict = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                               autocommit=autocommit)

    def sql(self, query: str, dbname: str = "postgres", params=None):
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def running(self) -> bool:
        return os.path.exists(os.path.join(self.datadir, "postmaster.pid"))

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            as_postgres([os.path.join(BINDIR, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"],
                        capture_output=True, timeout=60)

    def start(self, wait: bool = True) -> None:
        _pg_ctl_start(self.datadir, self.port, self.sockdir, self.log, wait=wait)


def _pg_ctl_start(datadir: str, port: int, sockdir: str, log: str, wait: bool = True, timeout: int = 60) -> None:
    args = [os.path.join(BINDIR, "pg_ctl"), "-D", datadir, "-l", log,
            "-o", f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-t", str(timeout)]
    args += ["-w"] if wait else ["-W"]
    args.append("start")
    result = as_postgres(args, capture_output=True, text=True, timeout=timeout + 10)
    if result.returncode != 0:
        tail = ""
        if os.path.exists(log):
            with open(log) as handle:
                tail = handle.read()[-3000:]
        raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{tail}")


def _make_dir(base: str, name: str) -> str:
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    os.chown(path, PG_USER.pw_uid, PG_USER.pw_gid)
    os.chmod(path, 0o700)
    return path


@pytest.fixture(scope="session")
def pg_work_dir():
    """A directory owned by postgres, reachable by it (mkdtemp under the system temp dir)."""
    if BINDIR is None or PG_USER is None or os.geteuid() != 0:
        pytest.skip("needs PostgreSQL binaries, a postgres user and root")
    base = tempfile.mkdtemp(prefix="insite-pg-tests-")
    os.chmod(base, 0o711)
    os.chown(base, PG_USER.pw_uid, PG_USER.pw_gid)
    if not postgres_can_reach(base):
        pytest.skip(f"the postgres user cannot reach {base}")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_factory(pg_work_dir):
    clusters: list[PgCluster] = []
    counter = [0]

    def create(conf: dict | None = None, start: bool = True) -> PgCluster:
        counter[0] += 1
        root = _make_dir(pg_work_dir, f"c{counter[0]}")
        datadir = os.path.join(root, "data")
        sockdir = _make_dir(root, "sock")
        log = os.path.join(root, "log")
        result = as_postgres([os.path.join(BINDIR, "initdb"), "-D", datadir, "-U", "postgres", "--auth=trust",
                              "-E", "UTF8", "--locale=C", "--no-sync"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr}")
        lines = ["max_wal_senders = 4", "wal_level = replica", "shared_buffers = 32MB",
                 "max_connections = 30"]
        for key, value in (conf or {}).items():
            lines.append(f"{key} = {value}")
        with open(os.path.join(datadir, "postgresql.conf"), "a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")
        cluster = PgCluster(datadir=datadir, port=free_port(), sockdir=sockdir, log=log)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    def adopt(cluster: PgCluster) -> PgCluster:
        clusters.append(cluster)
        return cluster

    create.adopt = adopt
    create.make_dir = lambda name: _make_dir(pg_work_dir, name)
    yield create
    for cluster in clusters:
        try:
            cluster.stop("immediate")
        except Exception:
            pass


@pytest.fixture(scope="session")
def pg_cluster(pg_factory):
    """One plain cluster shared by the logical tests (each test makes its own databases)."""
    return pg_factory()
