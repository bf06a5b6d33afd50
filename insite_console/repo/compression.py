"""Chunk compression: zstd (default), gzip or none, marked in a one-byte header.

The marker travels inside the encrypted blob, so each blob says how to decode itself and
policies with different settings can share one repository.
"""

from __future__ import annotations

import threading
import zlib

import zstandard

from insite_console.errors import IntegrityError

NONE, ZSTD, GZIP = 0, 1, 2
NAMES = {"none": NONE, "zstd": ZSTD, "gzip": GZIP}

_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; one per thread is cheap and reused.
    comp = getattr(_local, "zc", None)
    if comp is None:
        comp = _local.zc = zstandard.ZstdCompressor(level=3)
    return comp


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "zd", None)
    if dec is None:
        dec = _local.zd = zstandard.ZstdDecompressor()
    return dec


def compress(data: bytes | memoryview, method: str) -> bytes:
    """Return marker byte + payload; falls back to 'none' when compression does not pay."""
    code = NAMES[method]
    if code == ZSTD:
        packed = _zstd_compressor().compress(data)
    elif code == GZIP:
        packed = zlib.compress(data, 6)
    else:
        packed = None
    if packed is None or len(packed) >= len(data):
        return bytes([NONE]) + bytes(data)
    return bytes([code]) + packed


def decompress(blob: bytes, what: str = "chunk") -> bytes:
    if not blob:
        raise IntegrityError(f"{what} is empty")
    code, payload = blob[0], memoryview(blob)[1:]
    try:
        if code == NONE:
            return bytes(payload)
        if code == ZSTD:
            return _zstd_decompressor().decompress(payload)
        if code == GZIP:
            return zlib.decompress(payload)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise IntegrityError(f"{what} does not decompress: {exc}") from None
    raise IntegrityError(f"{what} has unknown compression marker {code}")
