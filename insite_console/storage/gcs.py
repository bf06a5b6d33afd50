"""Google Cloud Storage through google-cloud-storage (JSON API).

The SDK is imported on first use. Each thread gets its own `storage.Client` (its HTTP session
is not documented as thread-safe) sharing one credentials object.

Credentials: `credentials_file` (a service account JSON) if set; else, when
STORAGE_EMULATOR_HOST is set, anonymous credentials against the emulator; else Application
Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, the metadata server).

Integrity: a single upload sends the object's CRC32C and MD5 in its metadata, so GCS rejects
a body that does not match; a resumable upload (objects over `part_size`) has the SDK check
the CRC32C GCS computed when the upload ends. Full reads are checked against the CRC32C GCS
reports; ranged reads are authenticated by the repository's AES-GCM.

Objects over `part_size` go up as one resumable upload in chunks of up to 64 MiB (GCS has no
parallel multipart in the JSON API; the XML API's is not in the emulator). A failed upload
restarts from the beginning of the object, within the retry budget.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from typing import BinaryIO

from insite_console.config import parse_size
from insite_console.errors import StorageError
from insite_console.storage import ratelimit
from insite_console.storage.base import ObjectInfo
from insite_console.storage.cloud import MIB, CloudStorage, check_key, epoch
from insite_console.storage.retry import (
    NOT_FOUND,
    PERMANENT,
    TRANSIENT,
    CORRUPT,
    Failure,
    Retrier,
    TransientError,
    classify_common,
    is_transient_status,
)

DEFAULT_PART_SIZE = 16 * MIB
CHUNK_QUANTUM = 256 * 1024  # resumable chunks must be multiples of 256 KiB
DELETE_BATCH = 100  # the JSON API's batch limit
RESUMABLE_CHUNK_MAX = 64 * MIB  # held in memory per upload in flight


class _ThrottledFile(io.RawIOBase):
    """A read-only window of `size` bytes over a file from its current position; reads are
    charged to the upload bucket (bytes read again after a seek back are not charged twice)."""

    def __init__(self, raw: BinaryIO, size: int):
        super().__init__()
        self._raw = raw
        self._size = size
        self._pos = 0
        self._charged = 0
        try:
            self._start = raw.tell()
        except (OSError, AttributeError):
            self._start = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._start is not None

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self._size
        offset = max(0, min(offset, self._size))
        if offset != self._pos:
            if self._start is None:
                raise io.UnsupportedOperation("seek")
            self._raw.seek(self._start + offset)
            self._pos = offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._pos
        if left <= 0:
            return b""
        want = left if size is None or size < 0 else min(size, left)
        data = self._raw.read(want)
        self._pos += len(data)
        if self._pos > self._charged:
            ratelimit.throttle_upload(self._pos - self._charged)
            self._charged = self._pos
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ThrottledSink(io.RawIOBase):
    """Collects a download, charging every write to the download bucket."""

    def __init__(self):
        super().__init__()
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if not isinstance(data, bytes):
            data = bytes(data)
        ratelimit.throttle_download(len(data))
        self.chunks.append(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Missing(Exception):
    """get_blob found nothing."""


class GCSStorage(CloudStorage):
    scheme = "gs"
    delete_batch = DELETE_BATCH

    def __init__(self, name: str, settings: dict):
        self.bucket_name = settings["bucket"]
        self.project = settings.get("project") or None
        self.timeout = (float(settings.get("connect_timeout", 10)), float(settings.get("read_timeout", 60)))
        self._local = threading.local()
        self._credentials = None
        self._lock = threading.Lock()
        part = parse_size(settings.get("part_size") or DEFAULT_PART_SIZE)
        self._setup(name, settings, self.bucket_name, max(CHUNK_QUANTUM, part // CHUNK_QUANTUM * CHUNK_QUANTUM))

    # -- plumbing ---------------------------------------------------------------------------

    def _emulator(self) -> str | None:
        return self.settings.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST") or None

    def _resolve_credentials(self):
        from google.auth.credentials import AnonymousCredentials

        path = self.settings.get("credentials_file")
        if path:
            from google.oauth2 import service_account

            try:
                return service_account.Credentials.from_service_account_file(
                    os.path.expanduser(path), scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
                )
            except (OSError, ValueError) as exc:
                raise StorageError(
                    f"storage {self.name} ({self.describe()}): cannot read credentials_file {path}: {exc}"
                ) from None
        if self._emulator():
            return AnonymousCredentials()
        return None  # Application Default Credentials, resolved by the client

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from google.cloud import storage

            with self._lock:
                if self._credentials is None:
                    self._credentials = self._resolve_credentials() or False
            credentials = self._credentials or None
            options = None
            endpoint = self.settings.get("endpoint_url")
            if endpoint:
                options = {"api_endpoint": endpoint}
            project = self.project or ("insite-emulator" if self._emulator() else None)
            try:
                client = storage.Client(project=project, credentials=credentials, client_options=options)
            except Exception as exc:  # noqa: BLE001 - DefaultCredentialsError and friends
                failure = self._classify(exc)
                if failure is None:
                    raise
                raise self._retry.error("connect to", None, failure) from None
            self._local.client = client
        return client

    def _bucket(self):
        return self.client.bucket(self.bucket_name)

    def _classify(self, exc: BaseException) -> Failure | None:
        from google.api_core import exceptions as gex

        if isinstance(exc, _Missing):
            return Failure(NOT_FOUND, "not found")
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "DataCorruption" in names:
            return Failure(CORRUPT, f"checksum mismatch: {exc}")
        if isinstance(exc, gex.GoogleAPICallError):
            status = exc.code
            message = getattr(exc, "message", "") or str(exc)
            reason = f"HTTP {status}: {_short(message)}"
            if status == 404:
                lowered = message.lower()
                if "bucket does not exist" in lowered or "no such bucket" in lowered:
                    return Failure(PERMANENT, f"bucket {self.bucket_name} does not exist", self._create_hint())
                return Failure(NOT_FOUND, reason)
            if is_transient_status(status):
                return Failure(TRANSIENT, reason)
            if status in (401, 403):
                return Failure(PERMANENT, f"access denied ({reason})", self._credentials_hint())
            return Failure(PERMANENT, reason)
        if "InvalidResponse" in names:
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", None)
            reason = f"HTTP {status}: {_short(getattr(response, 'text', '') or str(exc))}"
            if status == 404:
                return Failure(NOT_FOUND, reason)
            if is_transient_status(status):
                return Failure(TRANSIENT, reason)
            if status in (401, 403):
                return Failure(PERMANENT, f"access denied ({reason})", self._credentials_hint())
            return Failure(PERMANENT, reason)
        if "DefaultCredentialsError" in names or "RefreshError" in names:
            return Failure(PERMANENT, f"no usable Google credentials ({exc})", self._credentials_hint())
        if "TransportError" in names:
            return Failure(TRANSIENT, f"connection failed: {exc}")
        return classify_common(exc)

    def _credentials_hint(self) -> str:
        return (
            "Set credentials_file to a service account JSON key, or set up Application Default "
            "Credentials (`gcloud auth application-default login`, GOOGLE_APPLICATION_CREDENTIALS), "
            f"with read/write access to gs://{self.bucket_name}."
        )

    def _create_hint(self) -> str:
        return (
            f"Create it with `gcloud storage buckets create gs://{self.bucket_name}` "
            "or let `insite-console init --create` create it."
        )

    # -- operations -------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        import google_crc32c

        check_key(self, key)
        if not isinstance(data, bytes):
            data = bytes(data)
        crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        full = self._full(key)

        def op():
            blob = self._bucket().blob(full, chunk_size=self.part_size)
            blob.crc32c = crc  # sent with the upload: GCS refuses a body that does not match
            blob.md5_hash = md5
            self._upload(blob, ratelimit.ThrottledReader(data), len(data), checksum=None)

        self._retry.call("upload", key, op)

    def _upload(self, blob, stream, size: int, checksum) -> None:
        try:
            blob.upload_from_file(
                stream,
                size=size,
                rewind=False,
                content_type="application/octet-stream",
                checksum=checksum,
                retry=None,
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001
            names = {cls.__name__ for cls in type(exc).__mro__}
            if "DataCorruption" in names:  # damaged in transit; the SDK deleted the bad object
                raise TransientError(f"upload checksum mismatch: {exc}") from exc
            raise

    def _put_large(self, key: str, fileobj: BinaryIO, size: int) -> None:
        full = self._full(key)
        try:
            start = fileobj.tell()
        except (OSError, AttributeError):
            start = None

        # a failed upload restarts from the start anyway, so bigger chunks only save round trips
        chunk = max(self.part_size, min(RESUMABLE_CHUNK_MAX, -(-size // CHUNK_QUANTUM) * CHUNK_QUANTUM))

        def op():
            if start is not None:
                fileobj.seek(start)
            blob = self._bucket().blob(full, chunk_size=chunk)
            self._upload(blob, _ThrottledFile(fileobj, size), size, checksum="crc32c")

        retry = self._retry
        if start is None:  # cannot rewind: one attempt
            retry = Retrier(self.name, self.describe(), self._classify, retries=0)
        retry.call("upload", key, op)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(self, key)
        if length is not None and length <= 0:
            self.stat(key)
            return b""
        full = self._full(key)
        whole = offset == 0 and length is None

        def op() -> bytes:
            from google.api_core import exceptions as gex

            sink = _ThrottledSink()
            blob = self._bucket().blob(full)
            try:
                blob.download_to_file(
                    sink,
                    start=offset if offset else None,
                    end=offset + length - 1 if length is not None else None,
                    checksum="crc32c" if whole else None,
                    retry=None,
                    timeout=self.timeout,
                )
            except gex.RequestRangeNotSatisfiable:
                return b""
            return sink.getvalue()

        return self._retry.call("read", key, op)

    def _list_page(self, full_prefix: str, token: str | None) -> tuple[list[tuple[str, int]], str | None]:
        iterator = self.client.list_blobs(self.bucket_name, prefix=full_prefix or None, page_size=self.list_page_size,
                                          page_token=token, retry=None, timeout=self.timeout)
        page = next(iterator.pages, None)
        items = [] if page is None else [(blob.name, blob.size, blob.updated) for blob in page]
        return items, iterator.next_page_token

    def _delete_batch(self, batch: list[str]) -> None:
        """One JSON API batch request (up to 100 deletes); 404s are fine, a transient failure
        of any delete retries the batch (deleting twice is harmless)."""

        def op():
            bucket = self._bucket()
            request = self.client.batch(raise_exception=False)
            with request:
                for key in batch:
                    bucket.delete_blob(self._full(key), retry=None, timeout=self.timeout)
            failures = []
            for key, response in zip(batch, request._responses):
                status = getattr(response, "status_code", 200)
                if 200 <= status < 300 or status == 404:
                    continue
                failures.append((key, status))
            transient = [f for f in failures if is_transient_status(f[1])]
            if transient:
                raise TransientError(f"HTTP {transient[0][1]} deleting {transient[0][0]} in a batch")
            if failures:
                key, status = failures[0]
                more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
                raise StorageError(f"{self._retry.prefix('delete', key)}: HTTP {status}{more}")

        label = batch[0] if len(batch) == 1 else f"{batch[0]} and {len(batch) - 1} more"
        self._retry.call("delete", label, op)

    def stat(self, key: str) -> ObjectInfo:
        check_key(self, key)
        full = self._full(key)

        def op():
            blob = self._bucket().get_blob(full, retry=None, timeout=self.timeout)
            if blob is None:
                raise _Missing()
            return int(blob.size or 0), epoch(blob.updated)

        return ObjectInfo(key, *self._retry.call("stat", key, op))

    def ensure_container(self, create: bool = False) -> None:
        """Make sure the bucket exists; create it when `create`, else explain how to."""
        def probe() -> bool:
            from google.api_core import exceptions as gex

            try:
                return self.client.lookup_bucket(self.bucket_name, retry=None, timeout=self.timeout) is not None
            except gex.Forbidden:
                # roles/storage.objectAdmin may not read bucket metadata: listing tells instead
                iterator = self.client.list_blobs(self.bucket_name, max_results=1, retry=None, timeout=self.timeout)
                try:
                    list(iterator)
                    return True
                except gex.NotFound:
                    return False

        if self._retry.call("find bucket", self.bucket_name, probe):
            return
        if not create:
            raise StorageError(
                f"storage {self.name} ({self.describe()}): bucket {self.bucket_name} does not exist.\n"
                + self._create_hint()
            )

        def make():
            from google.api_core import exceptions as gex

            try:
                self.client.create_bucket(
                    self.bucket_name,
                    project=self.project,
                    location=self.settings.get("location"),
                    retry=None,
                    timeout=self.timeout,
                )
            except gex.Conflict:
                pass

        self._retry.call("create bucket", self.bucket_name, make)

    def close(self) -> None:
        super().close()
        client = getattr(self._local, "client", None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
            self._local.client = None

