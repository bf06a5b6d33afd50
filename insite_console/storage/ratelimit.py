"""Bandwidth limits: one token bucket per direction, shared by every storage, connection and
thread of the process.

A limit is what the operator wants the *link* to carry, so it has to be process-wide: four
upload threads at "20MiB/s" each would otherwise put 80 MiB/s on the wire. Backends wrap the
bytes they send (`ThrottledReader`) and the bytes they receive (`throttle_download`) so the
rate holds for single puts, multipart parts and ranged gets alike.

Where a limit comes from, strongest first:
  1. `set_global_limits(upload=..., download=...)`: the CLI's `--limit-upload/--limit-download`;
  2. `limit_upload` / `limit_download` of the storages open in this process (the lowest wins);
  3. none: unlimited.
"""

from __future__ import annotations

import io
import re
import threading
import time

UPLOAD = "upload"
DOWNLOAD = "download"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*(?:/\s*s(?:ec)?|ps)?\s*$", re.IGNORECASE)


def parse_rate(value) -> int | None:
    """Bytes per second from an int (bytes/s) or a string such as "500KiB/s", "20MiB", "1GiB/s",
    "8MB/s" (KB/MB/GB are powers of 1000; K/M/G and KiB/MiB/GiB are powers of 1024).

    None, 0, "", "0", "none", "off" and "unlimited" mean no limit (returns None).
    Raises ValueError with a message meant for the operator."""
    if value is None or value is False:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid rate {value!r}: expected bytes per second or a string like '20MiB/s'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"invalid rate {value!r}: must not be negative")
        return int(value) or None
    if not isinstance(value, str):
        raise ValueError(f"invalid rate {value!r}: expected bytes per second or a string like '20MiB/s'")
    text = value.strip()
    if text.lower() in ("", "0", "none", "off", "unlimited"):
        return None
    match = _RATE.match(text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(
            f"invalid rate {value!r}: expected bytes per second or a number with a unit, "
            "like '500KiB/s', '20MiB/s', '1GiB/s' or '8MB/s'"
        )
    rate = int(float(match.group(1)) * _UNITS[unit])
    return rate or None


def format_rate(rate: int | None) -> str:
    if not rate:
        return "unlimited"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if rate >= size:
            return f"{rate / size:.4g} {unit}/s"
    return f"{rate} B/s"


class TokenBucket:
    """A token bucket that lets a caller go into debt and then sleeps the debt off.

    Going into debt (instead of waiting until the whole request fits) keeps big requests from
    starving and keeps the long-run rate exact however many threads share the bucket."""

    #: how much may be sent in one go after an idle period, in seconds' worth of the rate
    BURST_SECONDS = 0.25
    #: consume() sleeps in slices of at most this many bytes so a rate change takes effect soon
    SLICE = 256 * 1024

    def __init__(self, rate: int | None = None):
        self._lock = threading.Lock()
        self._rate: int | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self.set_rate(rate)

    @property
    def rate(self) -> int | None:
        return self._rate

    def set_rate(self, rate: int | None) -> None:
        with self._lock:
            if rate != self._rate:
                self._rate = rate or None
                self._tokens = 0.0
                self._stamp = time.monotonic()

    def consume(self, nbytes: int) -> None:
        """Account for `nbytes` sent or received; blocks as long as the rate requires."""
        while nbytes > 0:
            if self._rate is None:
                return
            piece = min(nbytes, self.SLICE)
            nbytes -= piece
            with self._lock:
                rate = self._rate
                if rate is None:
                    return
                now = time.monotonic()
                burst = max(64 * 1024, rate * self.BURST_SECONDS)
                self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                self._tokens -= piece
                wait = -self._tokens / rate if self._tokens < 0 else 0.0
            if wait > 0:
                time.sleep(wait)


_lock = threading.Lock()
_buckets = {UPLOAD: TokenBucket(), DOWNLOAD: TokenBucket()}
_overrides: dict[str, int | None] = {UPLOAD: None, DOWNLOAD: None}
_requested: dict[str, dict[int, int]] = {UPLOAD: {}, DOWNLOAD: {}}


def bucket(direction: str) -> TokenBucket:
    """The process-wide bucket for "upload" or "download"."""
    return _buckets[direction]


def _recompute(direction: str) -> None:
    override = _overrides[direction]
    requested = _requested[direction]
    rate = override if override is not None else (min(requested.values()) if requested else None)
    _buckets[direction].set_rate(rate)


def set_global_limits(upload=None, download=None) -> None:
    """Process-wide limits that override every storage's own (the CLI's --limit-upload and
    --limit-download). Accepts what `parse_rate` accepts; None leaves that direction to the
    storages' settings."""
    with _lock:
        _overrides[UPLOAD] = parse_rate(upload)
        _overrides[DOWNLOAD] = parse_rate(download)
        _recompute(UPLOAD)
        _recompute(DOWNLOAD)


def register(owner: object, upload=None, download=None) -> None:
    """A storage asks for limits (its `limit_upload` / `limit_download`); the lowest one asked
    for by any open storage applies unless a global limit is set. A bad value raises
    ConfigError naming the storage and the key."""
    from insite_console.errors import ConfigError

    parsed = {}
    for key, value in (("limit_upload", upload), ("limit_download", download)):
        try:
            parsed[key] = parse_rate(value)
        except ValueError as exc:
            name = getattr(owner, "name", "?")
            raise ConfigError(f"[storage.{name}] {key}: {exc}") from None
    upload, download = parsed["limit_upload"], parsed["limit_download"]
    with _lock:
        for direction, rate in ((UPLOAD, upload), (DOWNLOAD, download)):
            if rate:
                _requested[direction][id(owner)] = rate
            else:
                _requested[direction].pop(id(owner), None)
            _recompute(direction)


def unregister(owner: object) -> None:
    with _lock:
        for direction in (UPLOAD, DOWNLOAD):
            if _requested[direction].pop(id(owner), None) is not None:
                _recompute(direction)


def current_limits() -> dict[str, int | None]:
    return {UPLOAD: _buckets[UPLOAD].rate, DOWNLOAD: _buckets[DOWNLOAD].rate}


def reset() -> None:
    """Forget every limit (tests)."""
    with _lock:
        for direction in (UPLOAD, DOWNLOAD):
            _overrides[direction] = None
            _requested[direction].clear()
            _recompute(direction)


def is_limited(direction: str) -> bool:
    """Whether a limit applies now (backends skip the byte-by-byte accounting when not)."""
    return _buckets[direction].rate is not None


def throttle_upload(nbytes: int) -> None:
    _buckets[UPLOAD].consume(nbytes)


def throttle_download(nbytes: int) -> None:
    _buckets[DOWNLOAD].consume(nbytes)


class ThrottledReader(io.RawIOBase):
    """A seekable, read-only view of bytes whose reads are charged to the upload bucket.

    SDKs stream a file-like body onto the socket as they read it, so charging reads charges
    the wire. Seeking back (an SDK rewinding for its own reasons) is not charged twice for the
    same bytes: only bytes beyond the furthest point already read cost tokens."""

    def __init__(self, data: bytes | memoryview, on_bytes=None):
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0
        self._charged = 0
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        elif whence == io.SEEK_END:
            self._pos = len(self._view) + offset
        self._pos = max(0, min(self._pos, len(self._view)))
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos : end].tobytes()
        self._pos = end
        if end > self._charged:
            fresh = end - self._charged
            self._charged = end
            throttle_upload(fresh)
            if self._on_bytes:
                self._on_bytes(fresh)
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def readall(self) -> bytes:
        return self.read(-1)
