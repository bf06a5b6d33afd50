"""Retries for cloud storage calls: exponential backoff with full jitter, bounded.

Every backend turns SDK exceptions into a `Failure` (transient, not found, corrupt or
permanent) with its `classify` function; `Retrier.call` retries the transient ones and turns
everything into our own error types, whose message names the storage, where it points
(bucket/container and prefix) and the object:

    storage s3 (s3://insite-backups/prod): cannot upload data/ab/abcd: HTTP 503 SlowDown
        (gave up after 6 attempts in 31.2 s)

The SDKs' own retry layers are switched off by the backends (botocore total_max_attempts=1,
azure retry_total=0, google retry=None) so this is the only layer and the total number of
attempts is exactly what `retries` says.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from insite_console.errors import IntegrityError, ObjectNotFound, StorageError

log = logging.getLogger("insite_console.storage")

T = TypeVar("T")

TRANSIENT = "transient"  # timeouts, resets, refused connections, 5xx, 429, checksum rejected in transit
NOT_FOUND = "not_found"  # the object does not exist
CORRUPT = "corrupt"  # what came back does not match the checksum the server holds
PERMANENT = "permanent"  # 403, missing bucket, bad credentials, invalid request: retrying will not help

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.EAGAIN,
    }
)

DEFAULT_RETRIES = 5  # retries after the first attempt: 6 attempts in all
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 20.0
#: a corrupt download is retried once (a bit flipped in transit), not the full budget
CORRUPT_ATTEMPTS = 2


class ChecksumMismatch(Exception):
    """Raised by a backend when bytes read back do not match the checksum the server holds."""


class TransientError(Exception):
    """Raised by a backend for a failure it knows is worth retrying (an upload rejected for a
    checksum mismatch, a truncated response)."""


@dataclass(frozen=True)
class Failure:
    kind: str
    reason: str
    hint: str = ""


def is_transient_status(status) -> bool:
    try:
        return int(status) in TRANSIENT_STATUS
    except (TypeError, ValueError):
        return False


def classify_common(exc: BaseException) -> Failure | None:
    """Network failures every SDK lets through as plain Python exceptions."""
    if isinstance(exc, ChecksumMismatch):
        return Failure(CORRUPT, str(exc))
    if isinstance(exc, TransientError):
        return Failure(TRANSIENT, str(exc))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Failure(TRANSIENT, f"timed out ({str(exc) or 'no response'})")
    if isinstance(exc, ssl.SSLError):
        return Failure(TRANSIENT, f"TLS error: {exc}")
    if isinstance(exc, (ConnectionError, socket.gaierror)):
        return Failure(TRANSIENT, f"connection failed: {exc}")
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return Failure(TRANSIENT, f"connection failed: {exc}")
    # urllib3 / requests / http.client exceptions, matched by name so this module needs none
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {
        "ProtocolError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "NewConnectionError",
        "IncompleteRead",
        "RemoteDisconnected",
        "ChunkedEncodingError",
        "Timeout",
        "ConnectionError",
        "HTTPException",
    }:
        return Failure(TRANSIENT, f"connection failed: {exc}")
    return None


class Retrier:
    """Runs calls for one storage with its retry budget. Thread-safe and stateless per call."""

    def __init__(
        self,
        storage_name: str,
        where: str,
        classify: Callable[[BaseException], Failure | None],
        retries: int = DEFAULT_RETRIES,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.storage_name = storage_name
        self.where = where
        self.classify = classify
        self.attempts = max(1, int(retries) + 1)
        self.base_delay = max(0.0, float(base_delay))
        self.max_delay = max(self.base_delay, float(max_delay))
        self._sleep = sleep
        self._random = random.Random()
        self._random_lock = threading.Lock()
        #: attempts made, by outcome, since this retrier was made (tests and the benchmark read it)
        self.stats = {"calls": 0, "attempts": 0, "retries": 0}
        self._stats_lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    @classmethod
    def from_settings(cls, storage_name: str, where: str, classify, settings: dict) -> "Retrier":
        retries = settings.get("retries")
        return cls(
            storage_name,
            where,
            classify,
            retries=DEFAULT_RETRIES if retries is None else int(retries),
            base_delay=float(settings.get("retry_base_delay", DEFAULT_BASE_DELAY)),
            max_delay=float(settings.get("retry_max_delay", DEFAULT_MAX_DELAY)),
        )

    def backoff(self, retry_number: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**n)] (AWS architecture blog, 2015)."""
        ceiling = min(self.max_delay, self.base_delay * (2**retry_number))
        with self._random_lock:
            return self._random.uniform(0, ceiling)

    def prefix(self, action: str, key: str | None) -> str:
        target = f" {key}" if key is not None else ""
        return f"storage {self.storage_name} ({self.where}): cannot {action}{target}"

    def error(self, action: str, key: str | None, failure: Failure) -> StorageError:
        message = f"{self.prefix(action, key)}: {failure.reason}"
        if failure.hint:
            message += f"\n{failure.hint}"
        return StorageError(message)

    def not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"storage {self.storage_name} ({self.where}): object {key} does not exist")

    def call(self, action: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run `fn()`, retrying transient failures; `action` ("upload", "read", ...) and `key`
        go into the error message. `fn` must be safe to run again from the start."""
        started = time.monotonic()
        self._count("calls")
        attempt = 0
        corrupt_seen = 0
        while True:
            attempt += 1
            self._count("attempts")
            try:
                return fn()
            except (StorageError, IntegrityError):
                raise
            except Exception as exc:  # noqa: BLE001 - classified right here
                failure = self.classify(exc)
                if failure is None:  # not a storage failure: a bug, keep its traceback
                    raise
                if failure.kind == NOT_FOUND:
                    raise self.not_found(key if key is not None else "?") from None
                if failure.kind == PERMANENT:
                    raise self.error(action, key, failure) from exc
                if failure.kind == CORRUPT:
                    corrupt_seen += 1
                    if corrupt_seen >= CORRUPT_ATTEMPTS or attempt >= self.attempts:
                        raise IntegrityError(
                            f"storage {self.storage_name} ({self.where}): object {key} is corrupt "
                            f"on the storage: {failure.reason}"
                        ) from exc
                elif attempt >= self.attempts:
                    elapsed = time.monotonic() - started
                    err = self.error(
                        action,
                        key,
                        Failure(
                            failure.kind,
                            f"{failure.reason} (gave up after {attempt} attempts in {elapsed:.1f} s)",
                            failure.hint,
                        ),
                    )
                    raise err from exc
                delay = self.backoff(attempt - 1)
                self._count("retries")
                log.warning(
                    "%s: %s; retry %d/%d in %.2f s",
                    self.prefix(action, key),
                    failure.reason,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
