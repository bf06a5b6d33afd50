"""Azure Blob Storage through azure-storage-blob (block blobs).

The SDK is imported on first use. One ContainerClient is shared by every thread, over a
requests session whose pool is sized for `concurrency` parallel block uploads.

Credentials, first found wins: the connection string in the environment variable named by
`connection_string_env` (default AZURE_STORAGE_CONNECTION_STRING); else `account_url` with a
SAS token in the URL, or AZURE_STORAGE_SAS_TOKEN, or AZURE_STORAGE_KEY (the az CLI's
variables), or azure-identity's DefaultAzureCredential when that package is installed.

Integrity: every Put Blob and Put Block carries a transactional Content-MD5 (the SDK's
`validate_content`), so the service rejects a body damaged in transit (Md5Mismatch, retried).
The blob's CRC32C goes into its metadata (`insite_crc32c`, computed while reading the source)
and is checked on every full read; blobs written by other tools are checked against their
Content-MD5 property when they have one.

Large objects: blocks of `part_size` staged `concurrency` at a time, then one Put Block List;
the blob appears whole or not at all. Block ids carry a random per-upload token so two
writers of the same name never mix their blocks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO
from urllib.parse import urlparse

from insite_console.config import parse_size
from insite_console.errors import StorageError
from insite_console.storage import ratelimit
from insite_console.storage.base import ObjectInfo
from insite_console.storage.cloud import (
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

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MIB
MAX_BLOCKS = 50_000
MAX_BLOCK_SIZE = 4000 * MIB
DELETE_BATCH = 256  # the Blob Batch API's limit
DEFAULT_CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
CRC_METADATA = "insite_crc32c"  # blob metadata names must be C# identifiers: no hyphens


class _HashingReader:
    """Feeds what is read through CRC32C (parts are read in order on one thread)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        try:
            import google_crc32c

            self.crc = google_crc32c.Checksum()
        except ImportError:
            self.crc = None

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.crc is not None:
            self.crc.update(data)
        return data

    def hexdigest(self) -> str | None:
        return self.crc.digest().hex() if self.crc is not None else None


class AzureStorage(CloudStorage):
    scheme = "azure"
    delete_batch = DELETE_BATCH

    def __init__(self, name: str, settings: dict):
        self.container = settings["container"]
        self._client = None
        self._session = None
        self._lock = threading.Lock()
        part = min(MAX_BLOCK_SIZE, max(64 * 1024, parse_size(settings.get("part_size") or DEFAULT_PART_SIZE)))
        self._setup(name, settings, self.container, part)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self):
        """The ContainerClient."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self):
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import BlobServiceClient

        pool = max(10, self.concurrency * 2 + 8)
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        transport = RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=float(self.settings.get("connect_timeout", 10)),
            read_timeout=float(self.settings.get("read_timeout", 60)),
            connection_data_block_size=256 * 1024,  # what the SDK uses with its own transport
        )
        common = {
            "retry_total": 0,  # retry.py is the only retry layer
            "transport": transport,
            "max_single_put_size": self.part_size,
            "max_block_size": self.part_size,
            "max_single_get_size": 32 * MIB,
            "max_chunk_get_size": 4 * MIB,
        }
        if self.settings.get("api_version"):
            common["api_version"] = self.settings["api_version"]
        env = self.settings.get("connection_string_env") or DEFAULT_CONNECTION_STRING_ENV
        connection_string = os.environ.get(env)
        account_url = self.settings.get("account_url")
        try:
            if connection_string:
                service = BlobServiceClient.from_connection_string(connection_string, **common)
            elif account_url:
                service = BlobServiceClient(account_url, credential=self._credential(account_url), **common)
            else:
                raise StorageError(
                    f"storage {self.name} ({self.describe()}): no credentials: the environment variable "
                    f"{env} (connection_string_env) is not set and no account_url is configured"
                )
        except ValueError as exc:
            raise StorageError(f"storage {self.name} ({self.describe()}): invalid Azure connection settings: {exc}") from None
        return service.get_container_client(self.container)

    def _credential(self, account_url: str):
        if "sig=" in (urlparse(account_url).query or ""):
            return None  # a SAS token in the URL
        sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN")
        if sas:
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(sas.lstrip("?"))
        key = os.environ.get("AZURE_STORAGE_KEY")
        if key:
            account = os.environ.get("AZURE_STORAGE_ACCOUNT") or urlparse(account_url).hostname.split(".")[0]
            return {"account_name": account, "account_key": key}
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise StorageError(
                f"storage {self.name} ({self.describe()}): no credentials for {account_url}: set "
                "AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_KEY, put a SAS token in account_url, set the "
                "connection string variable, or `pip install azure-identity` for Entra ID sign-in"
            ) from None
        return DefaultAzureCredential()

    def _classify(self, exc: BaseException) -> Failure | None:
        from azure.core import exceptions as aex

        if isinstance(exc, aex.HttpResponseError):
            status = exc.status_code
            code = getattr(exc, "error_code", None) or ""
            code = str(getattr(code, "value", code))  # the SDK sometimes hands an enum
            reason = f"HTTP {status} {code}".rstrip() + f": {exc.reason or ''}".rstrip(": ")
            if code == "ContainerNotFound":
                return Failure(PERMANENT, f"container {self.container} does not exist", self._create_hint())
            if isinstance(exc, aex.ResourceNotFoundError) or status == 404:
                return Failure(NOT_FOUND, reason)
            if code in ("Md5Mismatch", "Crc64Mismatch", "OperationTimedOut", "ServerBusy", "InternalError"):
                return Failure(TRANSIENT, reason)
            text = str(exc.message or "").lower()
            if status == 400 and "md5" in text and "match" in text:  # Azurite: InvalidOperation
                return Failure(TRANSIENT, reason)
            if is_transient_status(status):
                return Failure(TRANSIENT, reason)
            if isinstance(exc, aex.ClientAuthenticationError) or status in (401, 403):
                return Failure(
                    PERMANENT,
                    f"access denied ({reason})",
                    "Check the connection string / account key / SAS token and that it may read and "
                    f"write container {self.container}.",
                )
            return Failure(PERMANENT, reason)
        if isinstance(exc, (aex.ServiceRequestError, aex.ServiceResponseError, aex.IncompleteReadError)):
            return Failure(TRANSIENT, f"connection failed: {exc}")
        common = classify_common(exc)
        if common is not None:
            return common
        if isinstance(exc, aex.AzureError):
            return Failure(PERMANENT, str(exc))
        return None

    def _create_hint(self) -> str:
        return (
            f"Create it with `az storage container create -n {self.container}` "
            "or let `insite-console init --create` create it."
        )

    # -- operations -------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        check_key(self, key)
        if len(data) > self.part_size:
            import io

            self._put_large(key, io.BytesIO(bytes(data)), len(data))
            return
        from azure.storage.blob import ContentSettings

        md5 = bytearray(hashlib.md5(data).digest())
        crc = crc32c_hex(data)
        metadata = {CRC_METADATA: crc} if crc else None
        blob = self.client.get_blob_client(self._full(key))

        def op():
            blob.upload_blob(
                upload_body(data),
                length=len(data),
                overwrite=True,
                validate_content=True,
                max_concurrency=1,
                metadata=metadata,
                content_settings=ContentSettings(content_type="application/octet-stream", content_md5=md5),
            )

        self._retry.call("upload", key, op)

    def _put_large(self, key: str, fileobj: BinaryIO, size: int) -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        part_size = part_plan(size, self.part_size, MAX_BLOCKS)
        blob = self.client.get_blob_client(self._full(key))
        token = secrets.token_hex(8)
        reader = _HashingReader(fileobj)

        def upload_one(number: int, data: bytes) -> str:
            block_id = base64.b64encode(f"{token}-{number:06d}".encode()).decode()

            def op():
                blob.stage_block(block_id, upload_body(data), length=len(data), validate_content=True)

            self._retry.call(f"upload block {number} of", key, op)
            return block_id

        block_ids = upload_parts(reader, size, part_size, self.concurrency, upload_one, self._retry.prefix("upload", key))
        crc = reader.hexdigest()
        self._retry.call(
            "commit",
            key,
            lambda: blob.commit_block_list(
                [BlobBlock(block_id=b) for b in block_ids],
                content_settings=ContentSettings(content_type="application/octet-stream"),
                metadata={CRC_METADATA: crc} if crc else None,
            ),
        )

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(self, key)
        if length is not None and length <= 0:
            self.stat(key)
            return b""
        blob = self.client.get_blob_client(self._full(key))
        whole = offset == 0 and length is None

        def op() -> bytes:
            from azure.core.exceptions import HttpResponseError

            limited = ratelimit.is_limited(ratelimit.DOWNLOAD)
            try:
                downloader = blob.download_blob(
                    offset=offset if (offset or length is not None) else None,
                    length=length,
                    max_concurrency=1 if limited else self.concurrency,
                    validate_content=False,
                )
                if limited:
                    chunks = []
                    for chunk in downloader.chunks():
                        ratelimit.throttle_download(len(chunk))
                        chunks.append(chunk)
                    data = b"".join(chunks)
                else:
                    data = downloader.readall()
            except HttpResponseError as exc:
                if exc.status_code == 416:
                    return b""  # asked from at or past the end, as a file read would
                raise
            if whole:
                expected = downloader.properties.size
                if expected is not None and expected != len(data):
                    raise ChecksumMismatch(f"got {len(data)} bytes, the blob has {expected}")
                recorded = (downloader.properties.metadata or {}).get(CRC_METADATA)
                actual = crc32c_hex(data) if recorded else None
                if actual is not None:
                    if actual != recorded:
                        raise ChecksumMismatch(f"CRC32C {actual} does not match {recorded} recorded at upload")
                    return data
                stored = downloader.properties.content_settings.content_md5
                if stored:
                    actual = hashlib.md5(data).digest()
                    if bytes(stored) != actual:
                        raise ChecksumMismatch(
                            f"MD5 {actual.hex()} does not match the blob's Content-MD5 {bytes(stored).hex()}"
                        )
            return data

        return self._retry.call("read", key, op)

    def _list_page(self, full_prefix: str, token: str | None) -> tuple[list[tuple[str, int]], str | None]:
        pages = self.client.list_blobs(name_starts_with=full_prefix or None,
                                       results_per_page=self.list_page_size).by_page(continuation_token=token)
        page = next(pages, None)
        items = [] if page is None else [(blob.name, blob.size, blob.last_modified) for blob in page]
        return items, pages.continuation_token

    _batch_supported = True

    def _delete_batch(self, batch: list[str]) -> None:
        if len(batch) == 1 or not self._batch_supported:
            self._delete_each(batch)
        else:
            self._delete_blob_batch(batch)

    def _delete_blob_batch(self, batch: list[str]) -> None:
        """One Blob Batch request (up to 256 deletes); 404s are fine, a transient failure of
        any sub-request retries the batch (deleting twice is harmless)."""
        from azure.core.exceptions import HttpResponseError

        def op():
            try:
                responses = list(
                    self.client.delete_blobs(*[self._full(key) for key in batch], raise_on_any_failure=False)
                )
            except HttpResponseError as exc:
                if exc.status_code in (400, 404, 405, 501) and getattr(exc, "error_code", "") != "ContainerNotFound":
                    return None  # no Blob Batch here (hierarchical namespace, some emulators)
                raise
            failures = [
                (key, response.status_code, getattr(response, "reason", ""))
                for key, response in zip(batch, responses)
                if not (200 <= response.status_code < 300 or response.status_code == 404)
            ]
            transient = [f for f in failures if is_transient_status(f[1])]
            if transient:
                raise TransientError(f"HTTP {transient[0][1]} deleting {transient[0][0]} in a batch")
            if failures:
                key, status, reason = failures[0]
                more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
                raise StorageError(f"{self._retry.prefix('delete', key)}: HTTP {status} {reason}{more}")
            return True

        label = f"{batch[0]} and {len(batch) - 1} more"
        if self._retry.call("delete", label, op) is None:
            self._batch_supported = False
            self._delete_each(batch)

    def _delete_each(self, keys: list[str]) -> None:
        def delete_one(key: str) -> None:
            from azure.core.exceptions import ResourceNotFoundError

            def op():
                try:
                    self.client.delete_blob(self._full(key))
                except ResourceNotFoundError:
                    pass

            self._retry.call("delete", key, op)

        if len(keys) == 1:
            delete_one(keys[0])
            return
        with ThreadPoolExecutor(max_workers=min(self.concurrency * 2, len(keys)), thread_name_prefix="insite-del") as pool:
            for future in [pool.submit(delete_one, key) for key in keys]:
                future.result()

    def stat(self, key: str) -> ObjectInfo:
        check_key(self, key)
        blob = self.client.get_blob_client(self._full(key))
        properties = self._retry.call("stat", key, lambda: blob.get_blob_properties())
        return ObjectInfo(key, int(properties.size), epoch(properties.last_modified))

    def ensure_container(self, create: bool = False) -> None:
        """Make sure the container exists; create it when `create`, else explain how to."""
        if self._retry.call("find container", self.container, lambda: self.client.exists()):
            return
        if not create:
            raise StorageError(
                f"storage {self.name} ({self.describe()}): container {self.container} does not exist.\n"
                + self._create_hint()
            )

        def make():
            from azure.core.exceptions import ResourceExistsError

            try:
                self.client.create_container()
            except ResourceExistsError:
                pass

        self._retry.call("create container", self.container, make)

    def close(self) -> None:
        super().close()
        with self._lock:
            client, self._client = self._client, None
            session, self._session = self._session, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        if session is not None:
            session.close()
