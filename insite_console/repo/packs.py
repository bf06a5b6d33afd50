"""Pack objects: many encrypted blobs in one storage object, with an encrypted header at the end.

Layout: blob_1 … blob_n | sealed header | header length (4 bytes, little endian).
Each header entry: type (1 byte), blob id (32 bytes), stored length (4), plain length (4);
offsets follow from the order. A pack describes itself, so the index can always be rebuilt
from the packs alone (`catalog rebuild`, orphan recovery after a crash).
"""

from __future__ import annotations

import hashlib
import struct

from insite_console.errors import IntegrityError
from insite_console.repo.crypto import Cipher

DATA, TREE = 0, 1
_ENTRY = struct.Struct("<B32sII")
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"pack-header"


def pack_key(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


def pack_id_from_key(key: str) -> str:
    return key.rsplit("/", 1)[-1]


class PackBuilder:
    """Accumulates sealed blobs in memory until the pack is big enough to upload."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.entries: list[tuple[int, bytes, int, int, int]] = []  # type, id, offset, length, plain
        self.size = 0

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes, plain_length: int) -> None:
        self.entries.append((blob_type, blob_id, self.size, len(sealed), plain_length))
        self.parts.append(sealed)
        self.size += len(sealed)

    def finish(self, cipher: Cipher) -> tuple[str, bytes]:
        """Return (pack id, pack bytes); the id is the SHA-256 of the bytes."""
        header = b"".join(_ENTRY.pack(t, bid, length, plain) for t, bid, _off, length, plain in self.entries)
        sealed_header = cipher.seal(header, HEADER_AAD)
        data = b"".join([*self.parts, sealed_header, _TRAILER.pack(len(sealed_header))])
        self.parts = []
        return hashlib.sha256(data).hexdigest(), data


def read_header(cipher: Cipher, tail: bytes, pack_size: int, what: str) -> list[tuple[int, bytes, int, int, int]]:
    """Parse a pack's header from its last bytes (`tail` must hold header + trailer)."""
    if len(tail) < _TRAILER.size:
        raise IntegrityError(f"{what} is truncated")
    (header_len,) = _TRAILER.unpack(tail[-_TRAILER.size:])
    if header_len + _TRAILER.size > min(len(tail), pack_size):
        raise IntegrityError(f"{what} is truncated or its header length is corrupt")
    sealed = tail[-_TRAILER.size - header_len:-_TRAILER.size]
    header = cipher.open(sealed, HEADER_AAD, what=f"{what} header")
    if len(header) % _ENTRY.size:
        raise IntegrityError(f"{what} header is malformed")
    entries, offset = [], 0
    for i in range(0, len(header), _ENTRY.size):
        blob_type, blob_id, length, plain = _ENTRY.unpack_from(header, i)
        entries.append((blob_type, blob_id, offset, length, plain))
        offset += length
    if offset + header_len + _TRAILER.size != pack_size:
        raise IntegrityError(f"{what}: size {pack_size} does not match its header")
    return entries


def header_span(pack_size: int, tail_guess: int = 64 * 1024) -> int:
    """How many trailing bytes to fetch to be likely to get the whole header in one request."""
    return min(pack_size, tail_guess)


def entry_size() -> int:
    return _ENTRY.size
