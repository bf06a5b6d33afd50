"""Amazon S3 and S3-compatible stores (MinIO, Ceph RGW, Wasabi, moto...) through boto3.

boto3 is imported when the first request is made, never at package import. One client is
shared by every thread (botocore clients are thread-safe); its connection pool is sized for
`concurrency` parallel part uploads plus the engine's own threads.

Integrity: every PUT and every part carries Content-MD5, so S3 rejects a body damaged in
transit (BadDigest, retried); the ETag that comes back is compared too, for S3-compatible
servers that do not check Content-MD5. The object's CRC32C and MD5 go into its metadata
(`x-amz-meta-insite-crc32c`, `-md5`); multipart objects record their part size instead, so a
full read can be checked against the ETag (MD5 of the part MD5s). Ranged reads are not
checked here: the repository authenticates every chunk with AES-GCM.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from insite_console.config import parse_size
from insite_console.errors import StorageError
from insite_console.storage import ratelimit
from insite_console.storage.base import ObjectInfo
from insite_console.storage.cloud import (
    MIB,
    CloudStorage,
    epoch,
    check_key,
    crc32c_hex,
    part_plan,
    upload_body,
    upload_parts,
)
from insite_console.storage.retry import (
    NOT_FOUND,
    PERMANENT,
    TRANSIENT,
    ChecksumMismatch,
    Failure,
    TransientError,
    classify_common,
    is_transient_status,
)

DEFAULT_PART_SIZE = 16 * MIB
MIN_PART_SIZE = 5 * MIB  # S3 refuses smaller parts (except the last)
MAX_PARTS = 10_000
DELETE_BATCH = 1000
READ_BLOCK = 256 * 1024

_TRANSIENT_CODES = frozenset(
    {
        "BadDigest",  # body damaged in transit: send it again
        "XAmzContentSHA256Mismatch",
        "RequestTimeout",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AllAccessDisabled"}
)


_pool = None
_pool_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="insite-md5")
        return _pool


def _check_etag(response: dict, md5_hex: str) -> None:
    """S3 checks Content-MD5 itself; some S3-compatible servers do not. Their ETag for a
    plain PUT or a part is the MD5 of what they received, so compare it, unless the object is
    encrypted server-side (then the ETag is not an MD5)."""
    if response.get("ServerSideEncryption") or response.get("SSECustomerAlgorithm"):
        return
    etag = (response.get("ETag") or "").strip('"').lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) and etag != md5_hex:
        raise TransientError(f"the server stored a body with MD5 {etag}, not the {md5_hex} sent (damaged in transit)")


class S3Storage(CloudStorage):
    scheme = "s3"
    delete_batch = DELETE_BATCH

    def __init__(self, name: str, settings: dict):
        self.bucket = settings["bucket"]
        self.endpoint_url = settings.get("endpoint_url") or None
        self.region = settings.get("region") or "us-east-1"
        self._client = None
        self._client_lock = threading.Lock()
        part = max(MIN_PART_SIZE, parse_size(settings.get("part_size") or DEFAULT_PART_SIZE))
        self._setup(name, settings, self.bucket, part)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _credentials(self) -> dict:
        key_env = self.settings.get("access_key_id_env")
        secret_env = self.settings.get("secret_access_key_env")
        if not key_env and not secret_env:
            return {}  # the standard AWS chain: env, ~/.aws, instance/task role
        missing = [env for env in (key_env, secret_env) if not env or not os.environ.get(env)]
        if missing:
            raise StorageError(
                f"storage {self.name} ({self.describe()}): access_key_id_env and secret_access_key_env "
                f"must both name set environment variables; not set: {', '.join(str(m) for m in missing)}"
            )
        creds = {"aws_access_key_id": os.environ[key_env], "aws_secret_access_key": os.environ[secret_env]}
        token_env = self.settings.get("session_token_env")
        if token_env and os.environ.get(token_env):
            creds["aws_session_token"] = os.environ[token_env]
        return creds

    def _make_client(self):
        import boto3
        from botocore.config import Config

        style = self.settings.get("addressing_style") or ("path" if self.endpoint_url else "auto")
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"total_max_attempts": 1, "mode": "standard"},  # retry.py is the only retry layer
            connect_timeout=float(self.settings.get("connect_timeout", 10)),
            read_timeout=float(self.settings.get("read_timeout", 60)),
            max_pool_connections=max(10, self.concurrency * 2 + 8),
            tcp_keepalive=True,
            # we send Content-MD5 ourselves; "when_required" keeps S3-compatible servers that do
            # not know the newer CRC trailers working
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        credentials = self._credentials()
        profile = self.settings.get("profile") if not credentials else None
        try:
            session = boto3.session.Session(region_name=self.region, profile_name=profile or None, **credentials)
        except Exception as exc:  # noqa: BLE001 - ProfileNotFound and friends
            raise StorageError(f"storage {self.name} ({self.describe()}): {exc}") from None
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _classify(self, exc: BaseException) -> Failure | None:
        import botocore.exceptions as bex

        if isinstance(exc, bex.ClientError):
            error = exc.response.get("Error", {}) or {}
            code = str(error.get("Code", ""))
            message = error.get("Message") or ""
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            reason = f"HTTP {status} {code}" + (f": {message}" if message and message != code else "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return Failure(NOT_FOUND, reason)
            if code == "NoSuchBucket":
                return Failure(PERMANENT, f"bucket {self.bucket} does not exist", self._create_hint())
            if code in _TRANSIENT_CODES or is_transient_status(status):
                return Failure(TRANSIENT, reason)
            if code == "RequestTimeTooSkewed":
                return Failure(PERMANENT, reason, "The clock of this machine is off; sync it (NTP) and try again.")
            if code in _CREDENTIAL_CODES or status in (401, 403):
                return Failure(
                    PERMANENT,
                    f"access denied ({reason})",
                    "Check the credentials (access_key_id_env/secret_access_key_env or the AWS chain) "
                    f"and that they may read and write s3://{self.bucket}.",
                )
            return Failure(PERMANENT, reason)
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return Failure(
                PERMANENT,
                f"no usable AWS credentials ({exc})",
                "Set access_key_id_env/secret_access_key_env in the storage's config to the names of "
                "environment variables holding them, or configure the AWS chain (AWS_ACCESS_KEY_ID, "
                "~/.aws/credentials, an instance role).",
            )
        if isinstance(exc, (bex.HTTPClientError, bex.ConnectionError, bex.IncompleteReadError)):
            return Failure(TRANSIENT, f"connection failed: {exc}")
        common = classify_common(exc)
        if common is not None:
            return common
        if isinstance(exc, bex.BotoCoreError):
            return Failure(PERMANENT, str(exc))
        return None

    def _create_hint(self) -> str:
        return (
            f"Create it with `aws s3 mb s3://{self.bucket}` (add --endpoint-url for an S3-compatible "
            "server) or let `insite-console init --create` create it."
        )

    # -- operations -------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        check_key(self, key)
        if len(data) > self.part_size:  # big: in parts, in parallel, each retried alone
            import io

            self.put_file(key, io.BytesIO(data), len(data))
            return
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        digest = hashlib.md5(data)
        md5_b64 = base64.b64encode(digest.digest()).decode()
        metadata = {"insite-md5": digest.hexdigest()}
        crc = crc32c_hex(data)
        if crc:
            metadata["insite-crc32c"] = crc  # checked on full reads; far cheaper than MD5
        full = self._full(key)

        def op():
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=upload_body(data),
                ContentLength=len(data),
                ContentMD5=md5_b64,
                Metadata=metadata,
            )
            _check_etag(response, digest.hexdigest())

        self._retry.call("upload", key, op)

    def _put_large(self, key: str, fileobj: BinaryIO, size: int) -> None:
        part_size = part_plan(size, self.part_size, MAX_PARTS)
        full = self._full(key)
        upload_id = self._retry.call(
            "start multipart upload of",
            key,
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata={"insite-part-size": str(part_size)}
            )["UploadId"],
        )

        def upload_one(number: int, data: bytes) -> dict:
            digest = hashlib.md5(data)
            md5 = base64.b64encode(digest.digest()).decode()

            def op():
                response = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=upload_body(data),
                    ContentLength=len(data),
                    ContentMD5=md5,
                )
                _check_etag(response, digest.hexdigest())
                return {"PartNumber": number, "ETag": response["ETag"]}

            return self._retry.call(f"upload part {number} of", key, op)

        try:
            parts = upload_parts(
                fileobj, size, part_size, self.concurrency, upload_one, self._retry.prefix("upload", key)
            )
            attempts = {"n": 0}

            def complete():
                attempts["n"] += 1
                try:
                    self.client.complete_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                    )
                except Exception as exc:
                    # a retried complete whose first try went through but whose answer was lost
                    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                    if attempts["n"] > 1 and code == "NoSuchUpload":
                        head = self.client.head_object(Bucket=self.bucket, Key=full)
                        if head.get("ContentLength") == size:
                            return
                    raise

            self._retry.call("complete multipart upload of", key, complete)
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - best effort; a lifecycle rule cleans up the rest
                pass
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(self, key)
        if length is not None and length <= 0:
            self.stat(key)
            return b""
        full = self._full(key)
        whole = offset == 0 and length is None
        kwargs = {"Bucket": self.bucket, "Key": full}
        if length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            kwargs["Range"] = f"bytes={offset}-"

        def op() -> bytes:
            import botocore.exceptions as bex

            try:
                response = self.client.get_object(**kwargs)
            except bex.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # asked from at or past the end, as a file read would
                raise
            body = response["Body"]
            try:
                if ratelimit.is_limited(ratelimit.DOWNLOAD):
                    chunks = []
                    while block := body.read(READ_BLOCK):
                        ratelimit.throttle_download(len(block))
                        chunks.append(block)
                    data = b"".join(chunks)
                else:
                    data = body.read()
            finally:
                body.close()
            if whole:
                self._verify(key, response, data)
            return data

        return self._retry.call("read", key, op)

    def _verify(self, key: str, response: dict, data: bytes) -> None:
        length = response.get("ContentLength")
        if length is not None and length != len(data):
            raise ChecksumMismatch(f"got {len(data)} bytes, the server announced {length}")
        metadata = response.get("Metadata") or {}
        expected = metadata.get("insite-crc32c")
        if expected:
            actual = crc32c_hex(data)
            if actual is not None:
                if actual != expected:
                    raise ChecksumMismatch(f"CRC32C {actual} does not match {expected} recorded at upload")
                return
        expected = metadata.get("insite-md5")
        if expected:
            actual = hashlib.md5(data).hexdigest()
            if actual != expected:
                raise ChecksumMismatch(f"MD5 {actual} does not match {expected} recorded at upload")
            return
        etag = (response.get("ETag") or "").strip('"')
        part_size = metadata.get("insite-part-size")
        if part_size and "-" in etag and not response.get("SSEKMSKeyId") and not response.get("SSECustomerAlgorithm"):
            part = int(part_size)
            view = memoryview(data)
            slices = [view[i : i + part] for i in range(0, len(data), part)]
            # hashlib releases the GIL: hash the parts on all cores
            digests = b"".join(_hash_pool().map(lambda piece: hashlib.md5(piece).digest(), slices))
            count = -(-len(data) // part)
            actual = f"{hashlib.md5(digests).hexdigest()}-{count}"
            if actual != etag:
                raise ChecksumMismatch(f"multipart ETag {actual} does not match {etag}")

    def _list_page(self, full_prefix: str, token: str | None) -> tuple[list[tuple[str, int]], str | None]:
        kwargs = {"Bucket": self.bucket, "Prefix": full_prefix, "MaxKeys": self.list_page_size}
        if token:
            kwargs["ContinuationToken"] = token
        page = self.client.list_objects_v2(**kwargs)
        items = [(item["Key"], int(item["Size"]), item.get("LastModified")) for item in page.get("Contents", ())]
        return items, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    def _delete_batch(self, batch: list[str]) -> None:
        import botocore.exceptions as bex

        objects = [{"Key": self._full(key)} for key in batch]

        def op():
            try:
                return self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            except bex.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "MissingContentMD5"):
                    raise
            for obj in objects:  # a server without DeleteObjects: one by one
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
            return {}

        label = batch[0] if len(batch) == 1 else f"{batch[0]} and {len(batch) - 1} more"
        response = self._retry.call("delete", label, op)
        errors = [e for e in response.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            raise StorageError(
                f"storage {self.name} ({self.describe()}): cannot delete {self._strip(first.get('Key', '?'))}: "
                f"{first.get('Code')}: {first.get('Message')}"
                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            )

    def stat(self, key: str) -> ObjectInfo:
        check_key(self, key)
        full = self._full(key)
        response = self._retry.call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        return ObjectInfo(key, int(response["ContentLength"]), epoch(response.get("LastModified")))

    def ensure_container(self, create: bool = False) -> None:
        """Make sure the bucket exists; create it when `create`, else explain how to."""
        import botocore.exceptions as bex

        def probe() -> bool:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return True
            except bex.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if code in ("404", "NoSuchBucket", "NotFound"):
                    return False
                raise

        if self._retry.call("find bucket", self.bucket, probe):
            return
        if not create:
            raise StorageError(
                f"storage {self.name} ({self.describe()}): bucket {self.bucket} does not exist.\n{self._create_hint()}"
            )

        def make():
            kwargs = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.client.create_bucket(**kwargs)
            except bex.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                    raise

        self._retry.call("create bucket", self.bucket, make)

    def close(self) -> None:
        super().close()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
