"""Authenticated encryption (AES-256-GCM) and passphrase key wrapping (scrypt).

Every stored byte goes through `seal`: a random 96-bit nonce per message, so a key may seal
about 2**32 messages before nonce reuse becomes a risk — four petabytes of 1 MiB chunks.
`aad` binds a ciphertext to its role (a chunk id, 'manifest', 'pack-header') so a blob cannot
be swapped for another that also authenticates.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from insite_console.errors import IntegrityError

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE

# scrypt parameters for new key files: ~0.1 s and 64 MiB here; stored in each key file so
# they can be raised later without touching data.
DEFAULT_SCRYPT = {"n": 2**16, "r": 8, "p": 1}


class Cipher:
    """AES-256-GCM with one key; safe to share between threads."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext) if isinstance(plaintext, memoryview) else plaintext, aad)

    def open(self, blob: bytes | memoryview, aad: bytes = b"", what: str = "object") -> bytes:
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{what} is truncated ({len(blob)} bytes)")
        blob = bytes(blob)
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise IntegrityError(f"{what} failed authentication: tampered with or corrupted") from None


def derive_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The key-encryption key for a key file, from the passphrase."""
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
