"""Key files: one random master key, wrapped by any number of passphrases.

`keys/<id>` holds scrypt parameters, a salt and the master key material sealed with the key
derived from that passphrase. Adding or removing a passphrase rewrites one small object and
never touches data, so a passphrase can be rotated or a recovery key escrowed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
from dataclasses import dataclass

from insite_console import clock
from insite_console.errors import IntegrityError, RepositoryError, WrongPassphrase
from insite_console.repo.crypto import DEFAULT_SCRYPT, Cipher, derive_key
from insite_console.storage.base import Storage

KEYS_PREFIX = "keys/"


@dataclass(frozen=True)
class MasterKey:
    """The secrets of a repository: AES key, chunk-id MAC key and chunker seed."""

    encryption_key: bytes
    mac_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(os.urandom(32), os.urandom(32), int.from_bytes(os.urandom(4), "little"))

    def to_bytes(self) -> bytes:
        return json.dumps({
            "encryption_key": _b64(self.encryption_key),
            "mac_key": _b64(self.mac_key),
            "chunker_seed": self.chunker_seed,
        }).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "MasterKey":
        try:
            raw = json.loads(data)
            master = cls(_unb64(raw["encryption_key"]), _unb64(raw["mac_key"]), int(raw["chunker_seed"]))
        except (ValueError, TypeError, KeyError, binascii.Error):
            raise IntegrityError("the master key material is malformed") from None
        if len(master.encryption_key) != 32 or len(master.mac_key) != 32:
            raise IntegrityError("the master key material is malformed")
        return master


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# Key files are plain JSON on storage: whoever can write there could ask for scrypt with
# terabytes of memory or hours of CPU. Refuse anything beyond these (the default is n=2**16, r=8).
MAX_SCRYPT = {"n": 2**20, "r": 32, "p": 16}
MAX_SCRYPT_MEMORY = 1 << 30  # 128 * n * r bytes


def check_key_file(key_file, what: str) -> dict:
    """A key file's fields, checked before any scrypt runs on them."""
    if not isinstance(key_file, dict):
        raise RepositoryError(f"{what} is not a JSON object")
    if key_file.get("kdf") != "scrypt":
        raise RepositoryError(f"{what} uses unknown kdf {str(key_file.get('kdf'))[:40]!r}")
    for name, high in MAX_SCRYPT.items():
        value = key_file.get(name)
        if type(value) is not int or not 1 <= value <= high:
            raise RepositoryError(f"{what}: scrypt parameter {name}={str(value)[:40]} is outside 1..{high}")
    if key_file["n"] < 2 or key_file["n"] & (key_file["n"] - 1) or 128 * key_file["n"] * key_file["r"] > MAX_SCRYPT_MEMORY:
        raise RepositoryError(f"{what}: scrypt parameters n={key_file['n']}, r={key_file['r']} are not allowed "
                              f"(n a power of two, at most {MAX_SCRYPT_MEMORY >> 20} MiB of memory)")
    for name in ("salt", "data"):
        try:
            _unb64(key_file.get(name))
        except (ValueError, TypeError, binascii.Error):
            raise RepositoryError(f"{what}: {name} is not base64") from None
    return key_file


def wrap(master: MasterKey, passphrase: str, label: str = "", scrypt: dict | None = None) -> dict:
    params = dict(scrypt or DEFAULT_SCRYPT)
    salt = os.urandom(16)
    kek = derive_key(passphrase, salt, **params)
    return {
        "kdf": "scrypt", **params, "salt": _b64(salt),
        "created_at": clock.iso(clock.now()), "host": socket.gethostname(), "label": label,
        "data": _b64(Cipher(kek).seal(master.to_bytes(), b"key")),
    }


def unwrap(key_file: dict, passphrase: str) -> MasterKey | None:
    """The master key if this passphrase opens this key file, else None."""
    check_key_file(key_file, "key file")
    kek = derive_key(passphrase, _unb64(key_file["salt"]), key_file["n"], key_file["r"], key_file["p"])
    try:
        material = Cipher(kek).open(_unb64(key_file["data"]), b"key")
    except IntegrityError:
        return None
    return MasterKey.from_bytes(material)


def list_keys(storage: Storage) -> list[tuple[str, dict]]:
    """Every key file, as JSON; one that is not JSON is listed as an empty dict (and refused
    by check_key_file), so one damaged key file does not hide the others."""
    keys = []
    for info in storage.list(KEYS_PREFIX):
        try:
            key_file = json.loads(storage.get(info.key))
        except ValueError:
            key_file = {}
        keys.append((info.key[len(KEYS_PREFIX):], key_file if isinstance(key_file, dict) else {}))
    return keys


def add_key(storage: Storage, master: MasterKey, passphrase: str, label: str = "", scrypt: dict | None = None) -> str:
    key_id = os.urandom(8).hex()
    storage.put(KEYS_PREFIX + key_id, json.dumps(wrap(master, passphrase, label, scrypt), indent=1).encode())
    return key_id


def unlock(storage: Storage, passphrase: str) -> tuple[MasterKey, str]:
    """Try each key file; return the master key and the id of the key file that opened."""
    keys = list_keys(storage)
    if not keys:
        raise RepositoryError(f"storage {storage.name} ({storage.describe()}): repository has no key files")
    damaged, refused = [], []
    for key_id, key_file in keys:
        what = f"key file {KEYS_PREFIX}{key_id} on storage {storage.name}"
        try:
            check_key_file(key_file, what)
            master = unwrap(key_file, passphrase)
        except (RepositoryError, IntegrityError) as exc:
            damaged.append(f"{what}: {exc}" if isinstance(exc, IntegrityError) else str(exc))
            continue
        if master is not None:
            return master, key_id
        refused.append(KEYS_PREFIX + key_id)
    where = f"of the repository on storage {storage.name} ({storage.describe()})"
    if not refused:
        raise RepositoryError(f"every key file {where} is damaged; put back a copy of a key file (without one the "
                              "repository cannot be opened); damaged: " + "; ".join(damaged))
    # AES-GCM cannot tell a wrong passphrase from a damaged key file: name the files tried
    raise WrongPassphrase(
        f"wrong passphrase: none of the {len(keys)} key(s) {where} opens with it (tried {', '.join(refused)}; "
        "if the passphrase is right, those key files are damaged)"
        + (f"; damaged: {'; '.join(damaged)}" if damaged else ""))


def remove_key(storage: Storage, key_id: str, current_key_id: str) -> None:
    keys = dict(list_keys(storage))
    if key_id not in keys:
        raise RepositoryError(f"storage {storage.name}: no key {key_id} (see `insite-console key list`)")
    if key_id == current_key_id:
        raise RepositoryError(
            f"refusing to remove key {key_id}: it is the one this passphrase opened; "
            "unlock with another passphrase to remove it"
        )
    if len(keys) == 1:
        raise RepositoryError("refusing to remove the last key: the repository would be unreadable")
    storage.delete([KEYS_PREFIX + key_id])
