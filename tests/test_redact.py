"""Passwords typed into restore target URLs never reach the screen, the JSON or the catalog."""

from __future__ import annotations

import json

import pytest

from insite_console import backup, cli
from insite_console.redact import redact
from tests.pg_servers import *  # noqa: F401,F403
from tests.redis_servers import *  # noqa: F401,F403
from tests.test_postgresql import new_db
from tests.test_postgresql import open_ws as pg_open_ws
from tests.test_postgresql import pg_config
from tests.test_redis import open_ws, redis_config


@pytest.mark.parametrize("text, shown", [
    ("redis://default:s3cr3t@127.0.0.1:6379/0", "redis://default:***@127.0.0.1:6379/0"),
    ("into rediss://:p@ss@cache:6380 failed", "into rediss://:***@cache:6380 failed"),
    ("postgresql://u:pw%2F1@db:5432/app?sslmode=require", "postgresql://u:***@db:5432/app?sslmode=require"),
    ("postgresql://u@db/app?password=pw1&sslmode=require", "postgresql://u@db/app?password=***&sslmode=require"),
    ("host=db password='a b' dbname=app", "host=db password=*** dbname=app"),
    ("/srv/restore/a@b=c", "/srv/restore/a@b=c"),
])
def test_redact_forms(text, shown):
    assert redact(text) == shown


def run_cli(capsys, config, *args: str) -> tuple[int, str]:
    code = cli.main(["-c", str(config), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def catalog_text(ws) -> str:
    return json.dumps(ws.catalog.restores()) + json.dumps(ws.catalog.events(limit=1000))


def test_redis_target_password_is_redacted(redis_factory, tmp_path, capsys):
    source = redis_factory()
    source.client().set("k", "v")
    target = redis_factory(password="tgt-secret-9")
    config = redis_config(tmp_path, source.url)
    ws = open_ws(config)
    done = backup.run(ws, "cache")
    url = f"redis://default:tgt-secret-9@127.0.0.1:{target.port}/0"
    code, text = run_cli(capsys, config, "restore", done["id"], "--target", url, "--yes")
    assert code == 0 and target.client().get("k") == b"v"
    assert f"127.0.0.1:{target.port}" in text and "tgt-secret-9" not in text
    code, text = run_cli(capsys, config, "restore", done["id"], "--target", url, "--yes", "--json")
    assert code == 0 and json.loads(text)["target"] == f"redis://default:***@127.0.0.1:{target.port}/0"
    wrong = f"redis://default:wrong-pw-3@127.0.0.1:{target.port}/0"
    code, text = run_cli(capsys, config, "restore", done["id"], "--target", wrong, "--yes")
    assert code == 1 and "authentication failed" in text and "wrong-pw-3" not in text
    stored = catalog_text(ws)
    assert "tgt-secret-9" not in stored and "wrong-pw-3" not in stored and ":***@" in stored
    ws.close()


@needs_pg  # noqa: F405
def test_postgresql_target_password_is_redacted(pg_cluster, tmp_path, capsys):
    name = new_db(pg_cluster, "redact")
    pg_cluster.sql("CREATE TABLE t (id int)", dbname=name)
    config = pg_config(tmp_path, pg_cluster.dsn_for(name))
    ws = pg_open_ws(config)
    done = backup.run(ws, "db")
    into = new_db(pg_cluster, "redact_into")
    url = f"postgresql://postgres:pg-secret-5@127.0.0.1:{pg_cluster.port}/{into}"
    code, text = run_cli(capsys, config, "restore", done["id"], "--target", url, "--yes")
    assert code == 0 and "pg-secret-5" not in text
    missing = f"postgresql://postgres:pg-secret-6@127.0.0.1:{pg_cluster.port}/no_such_db"
    code, text = run_cli(capsys, config, "restore", done["id"], "--target", missing, "--yes")
    assert code == 1 and "pg-secret-6" not in text
    stored = catalog_text(ws)
    assert "pg-secret-5" not in stored and "pg-secret-6" not in stored and ":***@" in stored
    ws.close()
