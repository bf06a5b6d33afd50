"""Cloud storage under faults, against real servers: injected 5xx and resets (a FaultProxy in
front of the emulator), a server killed mid-upload, bodies damaged in transit, objects
corrupted at rest; plus bandwidth limits and the retry policy itself."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time

import pytest

from insite_console.errors import IntegrityError, ObjectNotFound, StorageError
from insite_console.storage import open_storage, ratelimit
from insite_console.storage.retry import TRANSIENT, Failure, Retrier, classify_common
from tests.cloud_servers import *  # noqa: F401,F403 - the server fixtures
from tests.cloud_servers import AZURITE_ACCOUNT, AZURITE_KEY, FaultProxy, start_azurite, start_moto, unique_name

pytestmark = pytest.mark.cloud

MIB = 1024 * 1024
FAST_RETRY = {"retries": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.05}


@pytest.fixture(autouse=True)
def _no_leftover_limits():
    ratelimit.reset()
    yield
    ratelimit.reset()


def _settings(kind: str, endpoint: str, bucket: str, **extra) -> dict:
    common = {"prefix": "faults", "part_size": 5 * MIB, "concurrency": 2, **FAST_RETRY, **extra}
    if kind == "s3":
        return {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, **common}
    if kind == "gcs":
        return {"type": "gcs", "bucket": bucket, "endpoint_url": endpoint, "project": "test-project", **common}
    if kind == "azure":
        env = f"INSITE_TEST_AZURE_{abs(hash(endpoint))}"
        os.environ[env] = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
        )
        return {"type": "azure", "container": bucket, "connection_string_env": env, **common}
    raise ValueError(kind)


def _server(request, kind):
    return request.getfixturevalue({"s3": "s3_server", "gcs": "gcs_server", "azure": "azure_server"}[kind])


@pytest.fixture
def proxied(request):
    """(storage through a FaultProxy, the proxy, a direct storage on the same bucket)."""
    kind = request.param
    server = _server(request, kind)
    proxy = FaultProxy(server.port).start()
    bucket = unique_name()
    direct = open_storage(kind, _settings(kind, f"http://127.0.0.1:{server.port}", bucket))
    direct.ensure_container(create=True)
    through = open_storage(kind, _settings(kind, proxy.url, bucket))
    # inject faults into object requests only, not into google-cloud-storage's background
    # fetch of bucket metadata (which would race with the request under test)
    proxy.default_path = "/o" if kind == "gcs" else "faults"
    yield through, proxy, direct
    through.close()
    direct.close()
    proxy.stop()


ALL = ["s3", "gcs", "azure"]


@pytest.mark.parametrize("proxied", ALL, indirect=True)
def test_transient_errors_are_retried_until_success(proxied):
    store, proxy, direct = proxied
    proxy.fail(2, status=503, code="SlowDown")
    store.put("k", b"payload")
    assert _object_requests(proxy)[:2] == ["failed 503", "failed 503"]
    assert direct.get("k") == b"payload"

    proxy.clear()
    proxy.fail(1, status=500, code="InternalError")
    proxy.fail(1, status=429, code="TooManyRequests")
    assert store.get("k") == b"payload"
    assert store.get("k", 2, 3) == b"ylo"
    assert _object_requests(proxy)[:2] == ["failed 500", "failed 429"]

    proxy.clear()
    proxy.reset(2)
    assert [info.key for info in store.list()] == ["k"]
    assert _object_requests(proxy)[:2] == ["reset", "reset"]
    proxy.fail(2, status=503)
    assert store.stat("k").size == 7
    proxy.fail(2, status=502)
    store.delete(["k"])
    assert not direct.exists("k")


@pytest.mark.parametrize("proxied", ALL, indirect=True)
def test_large_uploads_survive_transient_errors(proxied, request):
    """A part (S3), a block (Azure) or a resumable chunk (GCS) that fails is sent again; GCS
    restarts its resumable upload from the beginning."""
    store, proxy, direct = proxied
    big = os.urandom(12 * MIB + 7)
    proxy.fail(1, status=503, methods={"PUT"})
    proxy.reset(1, methods={"PUT"})
    store.put_file("large", io.BytesIO(big), len(big))
    outcomes = proxy.outcomes("PUT")
    assert outcomes[:2] == ["failed 503", "reset"], outcomes
    assert hashlib.sha256(direct.get("large")).digest() == hashlib.sha256(big).digest()
    assert direct.stat("large").size == len(big)


@pytest.mark.parametrize("proxied", ALL, indirect=True)
def test_retry_budget_is_bounded_and_the_error_says_where(proxied):
    store, proxy, _direct = proxied
    proxy.fail(1000, status=503)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.put("dir/obj name", b"x" * 100)
    message = str(info.value)
    assert "gave up after 3 attempts" in message
    assert store.name in message and "dir/obj name" in message
    assert store.describe() in message  # bucket/container and prefix
    # retries=2: exactly three requests reached the server (no hidden SDK retry layer)
    assert _object_requests(proxy) == ["failed 503"] * 3, proxy.log
    assert time.monotonic() - started < 5

    proxy.clear()
    proxy.fail(1000, status=503)
    with pytest.raises(StorageError, match="gave up after 3 attempts"):
        store.get("dir/obj name")
    assert len(_object_requests(proxy)) == 3, proxy.log


def _object_requests(proxy) -> list[str]:
    """The outcomes of requests about objects, leaving out google-cloud-storage's background
    fetch of bucket metadata (GET /storage/v1/b/BUCKET, once per bucket, not a retry)."""
    import re

    bucket_get = re.compile(r"^/storage/v1/b/[^/?]+(\?|$)")
    return [what for method, path, what in proxy.log if not (method == "GET" and bucket_get.match(path))]


@pytest.mark.parametrize("proxied", ALL, indirect=True)
def test_permanent_errors_fail_at_once(proxied):
    store, proxy, direct = proxied
    direct.put("k", b"v")
    proxy.fail(1, status=403, code="AccessDenied")
    with pytest.raises(StorageError) as info:
        store.get("k")
    assert not isinstance(info.value, ObjectNotFound)
    assert "access denied" in str(info.value).lower() and "k" in str(info.value)
    assert _object_requests(proxy) == ["failed 403"]
    proxy.clear()
    with pytest.raises(ObjectNotFound, match="missing-key"):
        store.get("missing-key")
    assert len(_object_requests(proxy)) == 1  # a 404 is an answer, not retried


@pytest.mark.parametrize("proxied", ["s3", "azure"], indirect=True)
def test_body_damaged_in_transit_is_caught(proxied, request):
    """Every PUT carries Content-MD5, so S3 and Azure refuse a damaged body (BadDigest,
    Md5Mismatch) and we send it again. moto does not check Content-MD5: there the backend sees
    the ETag (the MD5 of what the server got) differ from what it sent, and sends it again."""
    kind = request.node.callspec.params["proxied"]
    store, proxy, direct = proxied
    data = os.urandom(200_000)
    expected_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    proxy.corrupt(1, methods={"PUT"})
    store.put("single", data)
    method, _path, headers = next(h for h in proxy.headers_seen if h[0] == "PUT")
    assert headers.get("content-md5") == expected_md5
    outcomes = proxy.outcomes("PUT")
    assert outcomes[:2] == (["corrupted 400", "forwarded 201"] if kind == "azure" else ["corrupted 200", "forwarded 200"])
    assert direct.get("single") == data

    proxy.clear()
    big = os.urandom(12 * MIB)  # three parts/blocks of 5 MiB
    proxy.corrupt(1, methods={"PUT"})
    store.put_file("multi", io.BytesIO(big), len(big))
    part_puts = [h for h in proxy.headers_seen if h[0] == "PUT" and ("partNumber=" in h[1] or "comp=block&" in h[1])]
    assert len(part_puts) >= 4 and all("content-md5" in h[2] for h in part_puts)
    assert proxy.outcomes("PUT").count("corrupted 400" if kind == "azure" else "corrupted 200") == 1
    assert hashlib.sha256(direct.get("multi")).digest() == hashlib.sha256(big).digest()


def _corrupt_at_rest(kind: str, direct, key: str, good: bytes, bad: bytes) -> None:
    """Replace the object's bytes behind the backend's back, keeping the checksum it recorded."""
    full = direct._full(key)
    if kind == "s3":
        head = direct.client.head_object(Bucket=direct.bucket, Key=full)
        direct.client.put_object(Bucket=direct.bucket, Key=full, Body=bad, Metadata=head["Metadata"])
    else:
        from azure.storage.blob import BlobBlock, ContentSettings

        blob = direct.client.get_blob_client(full)
        properties = blob.get_blob_properties()
        block_id = base64.b64encode(b"corrupt-000001").decode()
        blob.stage_block(block_id, bad)
        blob.commit_block_list(
            [BlobBlock(block_id=block_id)],
            content_settings=ContentSettings(content_md5=bytearray(hashlib.md5(good).digest())),
            metadata=properties.metadata,
        )


@pytest.mark.parametrize("proxied", ["s3", "azure"], indirect=True)
def test_object_corrupted_at_rest_is_detected_on_a_full_read(proxied, request):
    store, _proxy, direct = proxied
    kind = request.node.callspec.params["proxied"]
    good = os.urandom(100_000)
    bad = bytearray(good)
    bad[50_000] ^= 0x01
    store.put("rotten", good)
    assert store.get("rotten") == good
    _corrupt_at_rest(kind, direct, "rotten", good, bytes(bad))
    with pytest.raises(IntegrityError) as info:
        store.get("rotten")
    assert "rotten" in str(info.value) and store.name in str(info.value)
    # a ranged read is not checked here (the repository's AES-GCM authenticates chunks)
    assert store.get("rotten", 0, 10) == good[:10]


def test_azure_blob_from_another_tool_is_checked_against_content_md5(azure_server):
    from azure.storage.blob import ContentSettings

    store = open_storage("azure", _settings("azure", f"http://127.0.0.1:{azure_server.port}", unique_name()))
    try:
        store.ensure_container(create=True)
        good = os.urandom(50_000)
        blob = store.client.get_blob_client(store._full("foreign"))
        blob.upload_blob(good)  # no insite metadata; the service stores its Content-MD5
        assert store.get("foreign") == good
        blob.set_http_headers(ContentSettings(content_md5=bytearray(hashlib.md5(b"other").digest())))
        with pytest.raises(IntegrityError, match="foreign"):
            store.get("foreign")
    finally:
        store.close()


def test_s3_multipart_object_is_checked_against_its_etag(s3_server):
    store = open_storage("s3", _settings("s3", s3_server.endpoint_url, unique_name()))
    try:
        store.ensure_container(create=True)
        big = os.urandom(11 * MIB)
        store.put_file("mp", io.BytesIO(big), len(big))
        head = store.client.head_object(Bucket=store.bucket, Key=store._full("mp"))
        assert head["ETag"].strip('"').endswith("-3")
        assert store.get("mp") == big  # verified against the multipart ETag
        # metadata pointing at a different part size makes the ETag check fail: detected
        bogus = {"insite-part-size": str(4 * MIB)}
        store.client.copy_object(
            Bucket=store.bucket, Key=store._full("mp2"), CopySource={"Bucket": store.bucket, "Key": store._full("mp")},
            Metadata=bogus, MetadataDirective="REPLACE",
        )
        head2 = store.client.head_object(Bucket=store.bucket, Key=store._full("mp2"))
        if "-" in head2["ETag"]:  # moto keeps the multipart ETag on copy
            with pytest.raises(IntegrityError):
                store.get("mp2")
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_server_killed_mid_upload_gives_a_clean_error(kind, tmp_path):
    server = (start_moto if kind == "s3" else start_azurite)(tmp_path)
    store = open_storage(kind, _settings(kind, server.endpoint_url if kind == "s3" else f"http://127.0.0.1:{server.port}", unique_name(), limit_upload="20MiB/s"))
    try:
        store.ensure_container(create=True)
        data = os.urandom(30 * MIB)  # 1.5 s at 20 MiB/s
        failure: list[BaseException] = []
        done = threading.Event()

        def upload():
            try:
                store.put_file("doomed", io.BytesIO(data), len(data))
            except BaseException as exc:  # noqa: BLE001
                failure.append(exc)
            done.set()

        worker = threading.Thread(target=upload)
        worker.start()
        time.sleep(0.5)
        killed_at = time.monotonic()
        server.process.kill()
        assert done.wait(20), "the upload did not give up"
        elapsed = time.monotonic() - killed_at
        worker.join()
        assert failure and isinstance(failure[0], StorageError), failure
        message = str(failure[0])
        assert "doomed" in message and store.name in message
        assert "gave up after 3 attempts" in message
        assert elapsed < 10
    finally:
        store.close()
        server.process.stop()


# -- bandwidth limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (1000, 1000),
        ("1000", 1000),
        ("500KiB/s", 500 * 1024),
        ("20MiB", 20 * MIB),
        ("20 MiB/s", 20 * MIB),
        ("1GiB/s", 1024**3),
        ("8MB/s", 8_000_000),
        ("1.5M", int(1.5 * MIB)),
        ("100kb/s", 100_000),
        (None, None),
        (0, None),
        ("unlimited", None),
    ],
)
def test_parse_rate(text, expected):
    assert ratelimit.parse_rate(text) == expected


@pytest.mark.parametrize("bad", ["fast", "10 parsecs", "-5", -1, "MiB/s"])
def test_parse_rate_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="invalid rate"):
        ratelimit.parse_rate(bad)


def test_token_bucket_is_shared_by_threads():
    ratelimit.set_global_limits(upload="4MiB/s")
    started = time.monotonic()
    threads = [threading.Thread(target=ratelimit.throttle_upload, args=(MIB,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # 4 MiB at 4 MiB/s, less the 1 MiB burst allowance: ~0.75 s whatever the thread count
    assert 0.6 < elapsed < 1.5, elapsed


def test_limits_apply_to_real_uploads_and_downloads(s3_server):
    store = open_storage(
        "s3", _settings("s3", s3_server.endpoint_url, unique_name(), limit_upload="4MiB/s", limit_download="2MiB/s")
    )
    try:
        store.ensure_container(create=True)
        assert ratelimit.current_limits() == {"upload": 4 * MIB, "download": 2 * MIB}
        data = os.urandom(3 * MIB)
        time.sleep(0.3)  # let the bucket fill its burst so the numbers below are steady
        started = time.monotonic()
        store.put("limited", data)
        upload_time = time.monotonic() - started
        assert 0.4 < upload_time < 2.0, upload_time  # (3 MiB - 1 MiB burst) / 4 MiB/s = 0.5 s
        time.sleep(0.3)
        started = time.monotonic()
        assert store.get("limited") == data
        download_time = time.monotonic() - started
        assert 0.9 < download_time < 2.5, download_time  # (3 MiB - 0.5 MiB burst) / 2 MiB/s = 1.25 s

        ratelimit.set_global_limits(upload="64MiB/s")  # the CLI flag wins over the storage's
        assert ratelimit.current_limits()["upload"] == 64 * MIB
        started = time.monotonic()
        store.put("fast", data)
        assert time.monotonic() - started < 0.4
    finally:
        store.close()
    ratelimit.set_global_limits()
    assert ratelimit.current_limits() == {"upload": None, "download": None}  # closed storages release theirs


# -- the retry policy ------------------------------------------------------------------------------


def test_full_jitter_backoff_is_bounded():
    retrier = Retrier("s", "x://b", classify_common, retries=5, base_delay=0.5, max_delay=4)
    for attempt in range(10):
        ceiling = min(4, 0.5 * 2**attempt)
        for _ in range(50):
            assert 0 <= retrier.backoff(attempt) <= ceiling


def test_retrier_sleeps_between_attempts_and_stops():
    sleeps: list[float] = []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        raise ConnectionResetError(104, "Connection reset by peer")

    retrier = Retrier("store", "s3://b/p", classify_common, retries=3, base_delay=0.1, max_delay=1, sleep=sleeps.append)
    with pytest.raises(StorageError) as info:
        retrier.call("upload", "some/key", flaky)
    assert calls["n"] == 4 and len(sleeps) == 3
    assert "storage store (s3://b/p): cannot upload some/key" in str(info.value)
    assert "gave up after 4 attempts" in str(info.value)


def test_bugs_are_not_turned_into_storage_errors():
    retrier = Retrier("store", "s3://b", lambda exc: classify_common(exc), retries=3, sleep=lambda _: None)
    with pytest.raises(TypeError):
        retrier.call("upload", "k", lambda: (_ for _ in ()).throw(TypeError("a bug")))
    assert classify_common(TimeoutError()) == Failure(TRANSIENT, "timed out (no response)")
