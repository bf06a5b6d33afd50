"""Every storage backend behaves the same, against real servers: the local directory, S3
(moto_server), GCS (gcp-storage-emulator) and Azure Blob (Azurite)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from insite_console.errors import ObjectNotFound, StorageError
from insite_console.storage import open_storage
from insite_console.storage.base import ObjectInfo
from tests.cloud_servers import *  # noqa: F401,F403 - the server fixtures
from tests.cloud_servers import unique_name

pytestmark = pytest.mark.cloud

BACKENDS = ["local", "s3", "gcs", "azure"]
MIB = 1024 * 1024
ODD_PREFIX = "pre fix/ünï+%20"
ODD_KEYS = [
    "space in name",
    "unicode/ünïcödé-日本語-🙂",
    "plus+sign",
    "percent%41%2F%",
    "a%2Fb",
    "query?x=1&y=2",
    "hash#frag",
    "tilde~quote'\"",
    "brackets[1](2){3}",
    "semi;colon:comma,",
    "dots.../x..y",
    "equals=and@at",
]


def settings_for(request, kind: str, tmp_path, *, bucket: str | None = None, prefix: str = ODD_PREFIX, **extra):
    """The `[storage.NAME]` table for one backend on the session's server."""
    bucket = bucket or unique_name()
    if kind == "local":
        return {"type": "local", "path": str(tmp_path / "local-storage" / bucket)}
    common = {"prefix": prefix, "part_size": 5 * MIB, "concurrency": 4, "retries": 2, "retry_base_delay": 0.05}
    common.update(extra)
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        return {"type": "s3", "bucket": bucket, "endpoint_url": server.endpoint_url, **common}
    if kind == "gcs":
        request.getfixturevalue("gcs_server")  # sets STORAGE_EMULATOR_HOST
        return {"type": "gcs", "bucket": bucket, "project": "test-project", **common}
    if kind == "azure":
        server = request.getfixturevalue("azure_server")
        os.environ["INSITE_TEST_AZURE_CONN"] = server.extra["connection_string"]
        return {"type": "azure", "container": bucket, "connection_string_env": "INSITE_TEST_AZURE_CONN", **common}
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def kind(request):
    return request.param


@pytest.fixture
def storage(request, kind, tmp_path):
    store = open_storage(kind, settings_for(request, kind, tmp_path))
    if hasattr(store, "ensure_container"):
        store.ensure_container(create=True)
    yield store
    store.close()


@pytest.fixture(scope="session")
def big_blob():
    return os.urandom(50 * MIB + 12345)  # not a multiple of any part size


def test_round_trip_empty_and_small(storage):
    storage.put("empty", b"")
    storage.put("small", b"hello world")
    storage.put("view", memoryview(b"from a memoryview"))
    assert storage.get("empty") == b""
    assert storage.get("small") == b"hello world"
    assert storage.get("view") == b"from a memoryview"
    assert storage.stat("empty") == ObjectInfo("empty", 0)
    assert storage.stat("small") == ObjectInfo("small", 11)
    assert storage.exists("small") and not storage.exists("nothing-here")
    storage.put("small", b"replaced")
    assert storage.get("small") == b"replaced"


def test_modification_times_come_from_the_storage(storage):
    """Lock ages are judged by the storage's clock: stat and list must both carry it."""
    import time

    before = time.time()
    storage.put("locks/a", b"{}")
    listed = {info.key: info for info in storage.list("locks/")}
    stat = storage.stat("locks/a")
    for info in (listed["locks/a"], stat):
        assert info.mtime is not None
        assert abs(info.mtime - before) < 120  # the emulators run on this host's clock
    time.sleep(1.1)
    storage.put("locks/a", b'{"refreshed": 1}')
    assert storage.stat("locks/a").mtime > stat.mtime


def test_big_object_through_put_file(storage, big_blob):
    storage.put_file("data/big", io.BytesIO(big_blob), len(big_blob))
    assert storage.stat("data/big").size == len(big_blob)
    got = storage.get("data/big")
    assert len(got) == len(big_blob) and hashlib.sha256(got).digest() == hashlib.sha256(big_blob).digest()
    # ranges across part boundaries (parts are 5 MiB)
    for offset, length in [(0, 10), (5 * MIB - 3, 7), (10 * MIB - 1, 2 * MIB + 2), (len(big_blob) - 5, 5)]:
        assert storage.get("data/big", offset, length) == big_blob[offset : offset + length]
    assert storage.get("data/big", len(big_blob) - 100) == big_blob[-100:]
    # put() of more than part_size goes in parts too
    storage.put("data/big-put", memoryview(big_blob)[: 12 * MIB])
    assert storage.get("data/big-put") == big_blob[: 12 * MIB]


def test_small_put_file_and_short_source(storage):
    storage.put_file("pf", io.BytesIO(b"abc" * 1000), 3000)
    assert storage.get("pf") == b"abc" * 1000
    if storage.describe().startswith("local:"):
        return  # the local backend copies what it is given
    with pytest.raises(StorageError, match="ended after"):
        storage.put_file("short", io.BytesIO(b"x" * 100), 200)
    assert not storage.exists("short")


def test_ranged_reads(storage):
    data = bytes(range(256)) * 4
    storage.put("r", data)
    assert storage.get("r", 0, 1) == data[:1]
    assert storage.get("r", 10, 20) == data[10:30]
    assert storage.get("r", 1000) == data[1000:]
    assert storage.get("r", 1000, 100) == data[1000:]  # past the end: what is there
    assert storage.get("r", len(data)) == b""  # at the end: nothing
    assert storage.get("r", 5, 0) == b""


def test_missing_object_is_object_not_found(storage):
    for call in (lambda: storage.get("no/such key"), lambda: storage.get("no/such key", 3, 4), lambda: storage.stat("no/such key")):
        with pytest.raises(ObjectNotFound) as info:
            call()
        assert "no/such key" in str(info.value)
        assert storage.name in str(info.value)


def test_listing_past_a_page_boundary_and_batch_delete(storage, kind):
    # 1005 keys cross the 1000-key list page of S3 and Azure and S3's 1000-key delete batch.
    # The GCS emulator ignores page_size and rewrites its whole metadata file on every write,
    # so there 250 keys (still three 100-delete batches) keep the test fast.
    count = 250 if kind == "gcs" else 1005
    keys = [f"many/{i:05d}" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.put(key, key.encode()), keys))
    storage.put("other/x", b"x")
    storage.put("manyfold", b"not under many/")
    listed = sorted(storage.list("many/"), key=lambda info: info.key)
    assert [info.key for info in listed] == keys
    assert all(info.size == len(info.key) for info in listed)
    assert {info.key for info in storage.list("many/0020")} == {f"many/{i:05d}" for i in range(200, 210)}
    everything = {info.key for info in storage.list()}
    assert everything == set(keys) | {"other/x", "manyfold"}

    storage.delete(keys + ["many/never-existed"])  # more than one delete batch
    assert list(storage.list("many/")) == []
    assert storage.exists("other/x")


def test_delete_missing_is_not_an_error(storage):
    storage.put("d1", b"1")
    storage.put("d2", b"2")
    storage.delete(["d1", "missing-one"])
    storage.delete(["missing-two"])
    storage.delete([])
    assert not storage.exists("d1") and storage.exists("d2")
    with pytest.raises(ObjectNotFound, match="d1"):
        storage.get("d1")


def test_prefix_isolates_storages_on_one_bucket(request, kind, tmp_path):
    if kind == "local":
        pytest.skip("a local storage is its own directory")
    bucket = unique_name()
    one = open_storage(kind, settings_for(request, kind, tmp_path, bucket=bucket, prefix="repo"))
    two = open_storage(kind, settings_for(request, kind, tmp_path, bucket=bucket, prefix="repo-2"))
    top = open_storage(kind, settings_for(request, kind, tmp_path, bucket=bucket, prefix=""))
    try:
        one.ensure_container(create=True)
        one.put("k", b"one")
        two.put("k", b"two")
        assert [i.key for i in one.list()] == ["k"]
        assert [i.key for i in two.list()] == ["k"]
        assert sorted(i.key for i in top.list()) == ["repo-2/k", "repo/k"]
        assert top.get("repo/k") == b"one"
        assert bucket in one.describe() and one.describe().endswith("/repo")
    finally:
        for store in (one, two, top):
            store.close()


def test_concurrent_puts_from_threads(storage):
    barrier = threading.Barrier(8)
    payloads = {i: os.urandom(64 * 1024 + i) for i in range(8)}

    def writer(i):
        barrier.wait()
        for round_ in range(4):
            storage.put(f"conc/{i}/{round_}", payloads[i])
            storage.put("conc/shared", payloads[i])  # everyone overwrites the same key

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))
    for i in range(8):
        for round_ in range(4):
            assert storage.get(f"conc/{i}/{round_}") == payloads[i]
    assert storage.get("conc/shared") in payloads.values()  # whole, from one writer


def test_odd_key_characters(storage):
    for i, key in enumerate(ODD_KEYS):
        storage.put(key, f"value {i}".encode())
    for i, key in enumerate(ODD_KEYS):
        assert storage.get(key) == f"value {i}".encode(), key
        assert storage.stat(key).size == len(f"value {i}")
    assert sorted(info.key for info in storage.list()) == sorted(ODD_KEYS)
    assert [info.key for info in storage.list("unicode/ü")] == ["unicode/ünïcödé-日本語-🙂"]
    storage.delete(ODD_KEYS[:6])
    assert sorted(info.key for info in storage.list()) == sorted(ODD_KEYS[6:])


def test_invalid_keys_are_refused(storage):
    for key in ("/absolute", "a/../b"):
        with pytest.raises(StorageError, match="invalid object key"):
            storage.put(key, b"x")


def test_ensure_container(request, kind, tmp_path):
    if kind == "local":
        pytest.skip("the local backend has no container")
    bucket = unique_name("missing")
    store = open_storage(kind, settings_for(request, kind, tmp_path, bucket=bucket))
    try:
        with pytest.raises(StorageError) as info:
            store.ensure_container(create=False)
        message = str(info.value)
        assert bucket in message and store.name in message
        assert "does not exist" in message
        assert "insite-console init --create" in message
        assert {"s3": "aws s3 mb", "gcs": "gcloud storage buckets create", "azure": "az storage container create"}[
            kind
        ] in message
        with pytest.raises(StorageError) as info:
            store.put("k", b"v")  # writing into a missing bucket says so
        if kind != "gcs":  # the emulator's 404 does not say it is the bucket
            assert "does not exist" in str(info.value)
        store.ensure_container(create=True)
        store.ensure_container(create=True)  # idempotent
        store.ensure_container(create=False)
        store.put("k", b"v")
        assert store.get("k") == b"v"
    finally:
        store.close()


def test_describe_names_the_place(storage, kind):
    expected = {"local": "local:", "s3": "s3://", "gcs": "gs://", "azure": "azure://"}[kind]
    assert storage.describe().startswith(expected)


@pytest.mark.parametrize("cloud", ["s3", "gcs", "azure"])
def test_cli_backup_and_restore_through_the_cloud_backend(request, cloud, tmp_path):
    """The whole path a user takes: `init --create` on a missing bucket, a backup, a restore."""
    import json
    import subprocess
    import sys

    settings = settings_for(request, cloud, tmp_path, prefix="e2e repo")
    lines = [f"[storage.{cloud}]", f'type = "{cloud}"']
    for key in ("bucket", "container", "prefix", "endpoint_url", "project", "connection_string_env"):
        if key in settings:
            lines.append(f"{key} = {json.dumps(settings[key])}")
    tree = tmp_path / "tree"
    (tree / "sub dir").mkdir(parents=True)
    (tree / "sub dir" / "ünïcode.txt").write_text("hello\n" * 1000)
    (tree / "big.bin").write_bytes(os.urandom(3 * MIB))
    (tree / "empty").write_bytes(b"")
    config = tmp_path / "config.toml"
    config.write_text(
        "\n".join(
            [
                "[catalog]",
                'path = "state/catalog.sqlite"',
                "[encryption]",
                'passphrase_env = "INSITE_TEST_PASSPHRASE"',
                *lines,
                "[source.tree]",
                'type = "files"',
                f"paths = [{json.dumps(str(tree))}]",
                "[policy.tree]",
                'source = "tree"',
                f'storage = "{cloud}"',
                "retention = { keep_last = 3 }",
                "",
            ]
        )
    )
    env = {**os.environ, "INSITE_TEST_PASSPHRASE": "cloud test passphrase"}
    cli = [sys.executable, "-m", "insite_console", "-c", str(config)]

    def run(*args):
        return subprocess.run(cli + list(args), env=env, capture_output=True, text=True, timeout=120)

    first = run("init")
    assert first.returncode == 1, first.stdout + first.stderr  # the bucket does not exist yet
    assert "--create" in first.stderr and "Traceback" not in first.stderr
    created = run("init", "--create")
    assert created.returncode == 0, created.stdout + created.stderr
    backup = run("backup", "tree", "--json")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    result = json.loads(backup.stdout)
    assert result["status"] == "succeeded" and result["storage"] == cloud
    target = tmp_path / "restored"
    restore = run("restore", result["id"], "--target", str(target), "--yes", "--json")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    back = target / str(tree).lstrip("/")
    for path in tree.rglob("*"):
        if path.is_file():
            assert (back / path.relative_to(tree)).read_bytes() == path.read_bytes(), path
    verify = run("verify", result["id"], "--deep", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
