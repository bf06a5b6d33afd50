"""The RDB reader against files written by the real redis-server (7.x)."""

from __future__ import annotations

import io
import os
import time

import pytest

from insite_console.sources.rdb import RDBFormatError, RDBReader, RDBWriter, crc64, dump_payload
from tests.redis_servers import *  # noqa: F401,F403

pytestmark = [pytest.mark.redis, needs_redis, pytest.mark.timeout(120)]  # noqa: F405


def populate(client_for) -> None:
    """Every value type in each of its encodings, several DBs, TTLs, binary and LZF-compressed data."""
    c = client_for(0)
    c.set("str:small", "hello")
    c.set("str:int", 123456789)
    c.set("str:negint", -42)
    c.set("str:compressible", "abc" * 5000)  # LZF
    c.set(b"bin:\x00\xff\xfe", os.urandom(300))
    c.set("k" * 200, "long, compressible key name " * 3)  # LZF key
    c.set("ttl:short", "v", px=600_000)
    c.set("ttl:long", "v", ex=86_400 * 30)
    c.rpush("list:small", *[f"item{i}" for i in range(10)])
    c.rpush("list:big", *[os.urandom(64).hex() for _ in range(3000)])
    c.rpush("list:ints", *range(100))
    c.sadd("set:ints", *range(50))
    c.sadd("set:big", *[f"m{i}" for i in range(1000)])
    c.sadd("set:strs", "a", "b", "c")
    c.zadd("zset:small", {"a": 1.5, "b": -2, "c": float("inf")})
    c.zadd("zset:big", {f"m{i}": i / 3 for i in range(500)})
    c.hset("hash:small", mapping={"f1": "v1", "f2": "2"})
    c.hset("hash:big", mapping={f"f{i}": "x" * (i % 100) for i in range(1000)})
    c.hset("hash:bigvalue", mapping={"f": "y" * 1000})
    for i in range(30):
        c.xadd("stream:s", {"n": i, "payload": "p" * i})
    c.xgroup_create("stream:s", "grp", id="0")
    c.xreadgroup("grp", "consumer-1", {"stream:s": ">"}, count=5)
    c.xgroup_create("stream:empty", "g2", id="$", mkstream=True)
    c.set("session:1", "alice", ex=3600)
    c.set("session:2", "bob")
    c.setbit("bitmap", 1000, 1)
    c.pfadd("hll", *[f"e{i}" for i in range(100)])
    c.function_load("#!lua name=insitelib\nredis.register_function('insite_echo', function(keys, args) return args[1] end)")
    client_for(1).set("db1:key", "one")
    client_for(1).hset("db1:hash", "a", "b")
    client_for(5).rpush("db5:list", "x", "y")
    client_for(5).set("db5:ttl", "z", px=120_000)


@pytest.fixture
def populated(redis_server):
    populate(redis_server.client)
    return redis_server


def saved_rdb(server) -> bytes:
    server.client().save()
    with open(os.path.join(server.dir, "dump.rdb"), "rb") as handle:
        return handle.read()


class Trickle(io.RawIOBase):
    """A non-seekable stream that hands out at most 7 bytes a read."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(7, len(buffer), len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def read(self, size=-1):
        buf = bytearray(size if size and size > 0 else 7)
        n = self.readinto(buf)
        return bytes(buf[:n])


def test_crc64_matches_redis():
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert crc64(b"56789", crc64(b"1234")) == 0xE9C6D914C4B8D9CA


def test_every_key_parses_to_the_servers_own_dump_payload(populated):
    data = saved_rdb(populated)
    reader = RDBReader(io.BytesIO(data))
    records = list(reader)
    assert reader.checksum_ok is True
    assert reader.version >= 9 and reader.aux[b"redis-ver"].startswith(b"7")
    clients = {}
    seen = set()
    for rec in records:
        client = clients.setdefault(rec.db, populated.client(rec.db))
        assert dump_payload(rec.type, rec.raw, reader.version) == client.dump(rec.key), rec.key
        ttl = client.pttl(rec.key)
        if rec.expire_ms is None:
            assert ttl == -1
        else:
            assert abs((rec.expire_ms - int(time.time() * 1000)) - ttl) < 1000
        seen.add((rec.db, rec.key))
    expected = {(db, key) for db in (0, 1, 5) for key in populated.client(db).keys("*")}
    assert seen == expected
    types = {rec.type_name for rec in records}
    assert types == {"string", "list", "set", "zset", "hash", "stream"}
    assert {rec.db for rec in records} == {0, 1, 5}
    assert reader.resize[0][0] == populated.client(0).dbsize()


def test_reader_streams_with_tiny_reads_and_detects_corruption(populated):
    data = saved_rdb(populated)
    whole = [(r.db, r.key, r.raw) for r in RDBReader(io.BytesIO(data))]
    trickled = [(r.db, r.key, r.raw) for r in RDBReader(io.BufferedReader(Trickle(data), buffer_size=16))]
    assert whole == trickled
    with pytest.raises(RDBFormatError, match="truncated"):
        list(RDBReader(io.BytesIO(data[: len(data) // 2])))
    flipped = bytearray(data)
    flipped[len(data) - 20] ^= 0x01
    with pytest.raises(RDBFormatError):
        list(RDBReader(io.BytesIO(bytes(flipped))))


def test_filtered_rdb_written_by_us_loads_in_redis(populated, redis_factory, tmp_path):
    data = saved_rdb(populated)
    reader = RDBReader(io.BytesIO(data))
    out = io.BytesIO()
    writer = None
    for rec in reader:
        if writer is None:
            writer = RDBWriter(out, reader.version, aux=dict(reader.aux))
            writer.start()
        if rec.key.startswith((b"session:", b"db5:", b"stream:")):
            writer.write(rec)
    writer.finish()
    check = list(RDBReader(io.BytesIO(out.getvalue())))
    assert {r.key for r in check} == {b"session:1", b"session:2", b"db5:list", b"db5:ttl", b"stream:s",
                                      b"stream:empty"}
    server_dir = tmp_path / "load"
    server_dir.mkdir()
    (server_dir / "dump.rdb").write_bytes(out.getvalue())
    loaded = redis_factory(dir=str(server_dir))
    assert sorted(loaded.client(0).keys("*")) == [b"session:1", b"session:2", b"stream:empty", b"stream:s"]
    assert loaded.client(0).xinfo_groups("stream:s")[0]["pending"] == 5
    assert loaded.client(5).lrange("db5:list", 0, -1) == [b"x", b"y"]
    assert 0 < loaded.client(0).ttl("session:1") <= 3600
    loaded.stop()
