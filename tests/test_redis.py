"""Redis source: RDB over the replication protocol, restore key by key or as a file, real servers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from insite_console import backup, restore
from insite_console.errors import RestoreRefused, SourceError
from tests.redis_servers import *  # noqa: F401,F403
from tests.redis_servers import free_port
from tests.test_rdb import populate

pytestmark = [pytest.mark.redis, needs_redis, pytest.mark.timeout(120)]  # noqa: F405


def redis_config(directory: Path, url: str, extra: str = "") -> Path:
    config = directory / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [catalog]
        path = "state/catalog.sqlite"

        [encryption]
        passphrase_env = "INSITE_PASSPHRASE"

        [storage.local]
        type = "local"
        path = "repo"

        [source.cache]
        type = "redis"
        url = "{url}"
        """) + extra + textwrap.dedent("""
        [policy.cache]
        source = "cache"
        storage = "local"
        type = "full"
        """))
    return config


def open_ws(config: Path):
    from insite_console.workspace import Workspace

    ws = Workspace.load(config)
    ws.init_repository("local")
    return ws


def value_of(client, key: bytes, kind: bytes):
    """The logical value (hash-table order does not matter; DUMP bytes would depend on it)."""
    if kind == b"string":
        return client.get(key)
    if kind == b"list":
        return client.lrange(key, 0, -1)
    if kind == b"set":
        return sorted(client.smembers(key))
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == b"hash":
        return sorted(client.hgetall(key).items())
    if kind == b"stream":
        groups = [(g["name"], g["pending"], g["last-delivered-id"]) for g in client.xinfo_groups(key)]
        return client.xrange(key), groups, client.xinfo_stream(key)["last-generated-id"]
    return client.dump(key)


def snapshot(server, dbs=range(16)) -> dict:
    """Every key of every DB: type, value and absolute expiry (unix ms, PEXPIRETIME; -1 for none).
    An RDB and RESTORE ... ABSTTL keep the absolute expiry, so it compares exactly, whatever time
    passed between the two snapshots (a relative PTTL drifts with a loaded machine)."""
    out = {}
    for db in dbs:
        client = server.client(db)
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            out[(db, key)] = (kind, value_of(client, key, kind), client.execute_command("PEXPIRETIME", key))
    return out


def assert_same(source: dict, restored: dict) -> None:
    assert set(source) == set(restored)
    for key, (kind, payload, expiry) in source.items():
        r_kind, r_payload, r_expiry = restored[key]
        assert r_kind == kind, key
        assert r_payload == payload, key
        assert r_expiry == expiry, key


@pytest.fixture
def filled(redis_server):
    populate(redis_server.client)
    return redis_server


def test_backup_and_restore_into_an_empty_server_keeps_every_value_and_ttl(filled, redis_factory, tmp_path):
    ws = open_ws(redis_config(tmp_path, filled.url))
    done = backup.run(ws, "cache")
    assert done["status"] == "succeeded"
    info = ws.catalog.backup(done["id"])["info"]["source_info"]
    assert info["baselines"] == {"db0": filled.client(0).dbsize(), "db1": 2, "db5": 2}
    assert info["method"] == "sync" and info["rdb_version"] >= 9

    before = snapshot(filled)
    empty = redis_factory()
    result = restore.run(ws, done["id"], f"redis://127.0.0.1:{empty.port}")
    assert result["status"] == "succeeded"
    assert_same(before, snapshot(empty))
    assert empty.client().fcall("insite_echo", 0, "hi") == b"hi"
    compare = {row["object"]: row for row in result["baselines"]}
    assert compare["db5"]["backup"] == compare["db5"]["restored"] == compare["db5"]["target_now"] == 2
    ws.close()


def test_partial_restore_by_pattern_and_overwrite_rules(filled, redis_factory, tmp_path):
    ws = open_ws(redis_config(tmp_path, filled.url))
    done = backup.run(ws, "cache")
    target = redis_factory()
    url = f"redis://127.0.0.1:{target.port}"
    restore.run(ws, done["id"], url, includes=["session:*"])
    assert sorted(target.client(0).keys("*")) == [b"session:1", b"session:2"]
    assert target.client(1).dbsize() == 0
    assert 3590 <= target.client(0).ttl("session:1") <= 3600

    # the keys exist now: refused without --yes, and the plan says what would be overwritten
    target.client(0).set("session:2", "changed")
    plan = restore.run(ws, done["id"], url, includes=["session:*"], dry_run=True)
    assert plan["status"] == "planned"
    assert any(item["action"] == "overwrite" and item["path"] == "db0:session:2" for item in plan["plan"])
    with pytest.raises(RestoreRefused, match="exist already"):
        restore.run(ws, done["id"], url, includes=["session:*"])
    assert target.client(0).get("session:2") == b"changed"
    restore.run(ws, done["id"], url, includes=["session:*"], yes=True)
    assert target.client(0).get("session:2") == b"bob"

    # a db number in the target URL restricts the restore to that DB
    result = restore.run(ws, done["id"], f"redis://127.0.0.1:{target.port}/5")
    assert any("db0, db1" in note and "not restored" in note for note in result["notes"])
    assert sorted(target.client(5).keys("*")) == [b"db5:list", b"db5:ttl"]
    assert target.client(1).dbsize() == 0
    ws.close()


def test_restore_to_a_directory_writes_a_loadable_rdb_and_warns_about_aof(filled, redis_factory, tmp_path):
    ws = open_ws(redis_config(tmp_path, filled.url))
    done = backup.run(ws, "cache")
    target = tmp_path / "rdb-out"
    result = restore.run(ws, done["id"], str(target))
    assert any("appendonly yes" in note and "IGNORES dump.rdb" in note for note in result["notes"])
    loaded = redis_factory(dir=str(target))
    assert_same(snapshot(filled), snapshot(loaded))
    loaded.stop()
    with pytest.raises(RestoreRefused, match="exists"):
        restore.run(ws, done["id"], str(target))
    # a partial restore to a directory writes a filtered RDB
    partial = tmp_path / "rdb-partial"
    restore.run(ws, done["id"], str(partial), includes=["db5:*"])
    loaded = redis_factory(dir=str(partial))
    assert sorted(loaded.client(5).keys("*")) == [b"db5:list", b"db5:ttl"]
    assert loaded.client(0).dbsize() == 0
    loaded.stop()
    # a directory a server with appendonly yes used: it would load its AOF, never dump.rdb: refused
    aof_dir = tmp_path / "aof-server"
    aof_dir.mkdir()
    aof_server = redis_factory(dir=str(aof_dir), appendonly="yes")
    aof_server.client().set("from-the-aof", "1")
    aof_server.stop()
    assert (aof_dir / "appendonlydir").is_dir()
    with pytest.raises(RestoreRefused, match="appendonlydir.*ignores dump.rdb"):
        restore.run(ws, done["id"], str(aof_dir))
    assert not (aof_dir / "dump.rdb").exists()
    restore.run(ws, done["id"], str(aof_dir), yes=True)  # the operator turned appendonly off
    assert (aof_dir / "dump.rdb").exists()
    ws.close()


def test_server_down_names_host_and_port(tmp_path):
    port = free_port()
    ws = open_ws(redis_config(tmp_path, f"redis://127.0.0.1:{port}/0"))
    with pytest.raises(SourceError) as caught:
        backup.run(ws, "cache")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert ws.catalog.backups()[0]["status"] == "failed"
    ws.close()


def test_wrong_password_is_reported_without_the_password(redis_factory, tmp_path, monkeypatch):
    server = redis_factory(password="right-pass-7")
    server.client().set("k", "v")
    ws = open_ws(redis_config(tmp_path, server.url, extra='password_env = "CACHE_PASSWORD"\n'))
    monkeypatch.setenv("CACHE_PASSWORD", "wrong-pass-8")
    with pytest.raises(SourceError) as caught:
        backup.run(ws, "cache")
    assert "authentication failed" in str(caught.value) and f"127.0.0.1:{server.port}" in str(caught.value)
    assert "wrong-pass-8" not in json.dumps(ws.catalog.backups()) + json.dumps(ws.catalog.events(limit=1000))
    monkeypatch.setenv("CACHE_PASSWORD", "right-pass-7")
    done = backup.run(ws, "cache")
    assert done["status"] == "succeeded"
    ws.close()


def test_diskless_sync_server_is_backed_up_too(redis_factory, tmp_path):
    server = redis_factory(repl_diskless_sync="yes", repl_diskless_sync_delay="0")
    populate(server.client)
    ws = open_ws(redis_config(tmp_path, server.url))
    done = backup.run(ws, "cache")
    target = redis_factory()
    restore.run(ws, done["id"], f"redis://127.0.0.1:{target.port}")
    assert_same(snapshot(server), snapshot(target))
    ws.close()


def test_bgsave_fallback_when_the_server_refuses_replication(redis_factory, tmp_path):
    server = redis_factory(rename_command=["SYNC", ""])
    server.client().set("only", "via bgsave")
    ws = open_ws(redis_config(tmp_path, server.url, extra=f'data_dir = "{server.dir}"\n'))
    done = backup.run(ws, "cache")
    assert ws.catalog.backup(done["id"])["info"]["source_info"]["method"] == "bgsave"
    assert any("falling back to BGSAVE" in warning for warning in done["warnings"])
    target = redis_factory()
    restore.run(ws, done["id"], f"redis://127.0.0.1:{target.port}")
    assert target.client().get("only") == b"via bgsave"
    ws.close()


def test_target_without_a_password_does_not_borrow_the_sources(redis_factory, tmp_path, monkeypatch):
    """The source's password_env is the source's secret: a target URL without a password gets
    none (the failure says so and names the variable to pass); --target-password-env names the
    target's own. Before, the source's password went to the target silently."""
    source = redis_factory(password="source-pass-1")
    source.client().set("k", "v")
    ws = open_ws(redis_config(tmp_path, source.url, extra='password_env = "CACHE_PASSWORD"\n'))
    monkeypatch.setenv("CACHE_PASSWORD", "source-pass-1")
    done = backup.run(ws, "cache")
    target = redis_factory(password="source-pass-1")  # same password: borrowing would "work"
    with pytest.raises(SourceError) as caught:
        restore.run(ws, done["id"], f"redis://127.0.0.1:{target.port}")
    message = str(caught.value)
    assert "authentication failed" in message and "no password was sent" in message
    assert "--target-password-env CACHE_PASSWORD" in message and "source-pass-1" not in message
    monkeypatch.setenv("TARGET_PASSWORD", "wrong-target-pass")
    with pytest.raises(SourceError, match=r"sent the password from \$TARGET_PASSWORD"):
        restore.run(ws, done["id"], f"redis://127.0.0.1:{target.port}",
                    options={"target_password_env": "TARGET_PASSWORD"})
    monkeypatch.setenv("TARGET_PASSWORD", "source-pass-1")
    restored = restore.run(ws, done["id"], f"redis://127.0.0.1:{target.port}",
                           options={"target_password_env": "TARGET_PASSWORD"})
    assert restored["status"] == "succeeded" and target.client().get("k") == b"v"
    assert any("$TARGET_PASSWORD" in note for note in restored["notes"])
    ws.close()
