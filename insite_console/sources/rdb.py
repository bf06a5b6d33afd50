"""A streaming reader (and a small writer) for Redis RDB files, as Redis 6.x/7.x write them.

We do not decode values. For each key we capture the raw serialized bytes of its value exactly
as the RDB holds them; `dump_payload()` turns those into a DUMP payload (type byte + value
bytes + RDB version + CRC64) that `RESTORE` accepts, so every type (strings with int/LZF
encodings, quicklist/listpack lists, intset/listpack/hashtable sets, listpack/skiplist sorted
sets, listpack/hashtable hashes, streams with consumer groups, module values) comes back
exactly, with nothing reinterpreted on our side. We parse only what is needed to find where a
value ends, plus the DB selector, expiry, aux fields, RESIZEDB and the trailing CRC64.

Memory is bounded by the largest single value: the file is read through a fixed-size buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from insite_console.errors import IntegrityError

# opcodes
OP_SLOT_INFO = 244  # 7.4+: slot id, slot size, expires slot size (three lengths)
OP_FUNCTION2 = 245
OP_FUNCTION_PRE_GA = 246
OP_MODULE_AUX = 247
OP_IDLE = 248
OP_FREQ = 249
OP_AUX = 250
OP_RESIZEDB = 251
OP_EXPIRETIME_MS = 252
OP_EXPIRETIME = 253
OP_SELECTDB = 254
OP_EOF = 255

# value types
T_STRING = 0
T_LIST = 1
T_SET = 2
T_ZSET = 3
T_HASH = 4
T_ZSET_2 = 5
T_MODULE = 6
T_MODULE_2 = 7
T_HASH_ZIPMAP = 9
T_LIST_ZIPLIST = 10
T_SET_INTSET = 11
T_ZSET_ZIPLIST = 12
T_HASH_ZIPLIST = 13
T_LIST_QUICKLIST = 14
T_STREAM_LISTPACKS = 15
T_HASH_LISTPACK = 16
T_ZSET_LISTPACK = 17
T_LIST_QUICKLIST_2 = 18
T_STREAM_LISTPACKS_2 = 19
T_SET_LISTPACK = 20
T_STREAM_LISTPACKS_3 = 21

TYPE_NAMES = {
    T_STRING: "string", T_LIST: "list", T_SET: "set", T_ZSET: "zset", T_HASH: "hash",
    T_ZSET_2: "zset", T_MODULE: "module", T_MODULE_2: "module", T_HASH_ZIPMAP: "hash",
    T_LIST_ZIPLIST: "list", T_SET_INTSET: "set", T_ZSET_ZIPLIST: "zset", T_HASH_ZIPLIST: "hash",
    T_LIST_QUICKLIST: "list", T_STREAM_LISTPACKS: "stream", T_HASH_LISTPACK: "hash",
    T_ZSET_LISTPACK: "zset", T_LIST_QUICKLIST_2: "list", T_STREAM_LISTPACKS_2: "stream",
    T_SET_LISTPACK: "set", T_STREAM_LISTPACKS_3: "stream",
}

_SINGLE_STRING_TYPES = {T_STRING, T_HASH_ZIPMAP, T_LIST_ZIPLIST, T_SET_INTSET, T_ZSET_ZIPLIST,
                        T_HASH_ZIPLIST, T_HASH_LISTPACK, T_ZSET_LISTPACK, T_SET_LISTPACK}

MODULE_OP_EOF, MODULE_OP_SINT, MODULE_OP_UINT, MODULE_OP_FLOAT, MODULE_OP_DOUBLE, MODULE_OP_STRING = range(6)


# --- CRC-64/Jones (reflected, poly 0xad93d23594c935a9, init 0, xorout 0), as Redis uses ----------

def _make_tables() -> list[list[int]]:
    poly = 0x95AC9329AC4BC9B5  # bit-reversed 0xad93d23594c935a9
    t0 = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        t0.append(crc)
    tables = [t0]
    for k in range(1, 8):
        prev = tables[k - 1]
        tables.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tables


_T = _make_tables()


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Redis's CRC64 of `data`, continuing from `crc` (slice-by-8)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    mv = memoryview(data)
    n = len(mv)
    whole = n - n % 8
    if whole:
        for (word,) in struct.iter_unpack("<Q", mv[:whole]):
            crc ^= word
            crc = (t7[crc & 0xFF] ^ t6[(crc >> 8) & 0xFF] ^ t5[(crc >> 16) & 0xFF]
                   ^ t4[(crc >> 24) & 0xFF] ^ t3[(crc >> 32) & 0xFF] ^ t2[(crc >> 40) & 0xFF]
                   ^ t1[(crc >> 48) & 0xFF] ^ t0[crc >> 56])
    for b in mv[whole:]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def dump_payload(value_type: int, raw: bytes, rdb_version: int) -> bytes:
    """The DUMP format RESTORE expects: type, value, 2-byte LE RDB version, 8-byte LE CRC64."""
    body = bytes([value_type]) + raw + struct.pack("<H", rdb_version)
    return body + struct.pack("<Q", crc64(body))


def encode_length(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    if n <= 0xFFFFFFFF:
        return b"\x80" + struct.pack(">I", n)
    return b"\x81" + struct.pack(">Q", n)


def encode_string(data: bytes) -> bytes:
    return encode_length(len(data)) + data


# --- reading ------------------------------------------------------------------------------------

@dataclass
class Record:
    """One key of the RDB: `raw` is the value's serialized bytes (without the type byte)."""

    db: int
    key: bytes
    type: int
    raw: bytes
    expire_ms: int | None = None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type{self.type}")


class RDBFormatError(IntegrityError):
    """The stream is not an RDB file we can read, or it is truncated."""


class _Input:
    """Buffered reader with an optional capture of everything read and a running CRC."""

    BLOCK = 1 << 20

    def __init__(self, fileobj: BinaryIO, checksum: bool):
        self._f = fileobj
        self._buf = b""
        self._pos = 0
        self.offset = 0
        self.capture: list[bytes] | None = None
        self._checksum = checksum
        self.crc = 0
        self._crc_upto = 0  # bytes of self._buf already added to the crc

    def _fill(self, need: int) -> None:
        # fold consumed bytes into the CRC before dropping them
        if self._checksum and self._crc_upto < self._pos:
            self.crc = crc64(memoryview(self._buf)[self._crc_upto:self._pos], self.crc)
            self._crc_upto = self._pos
        rest = self._buf[self._pos:]
        pieces = [rest]
        have = len(rest)
        while have < need:
            block = self._f.read(max(self.BLOCK, need - have))
            if not block:
                break
            pieces.append(block)
            have += len(block)
        self._buf = b"".join(pieces) if len(pieces) > 1 else rest
        self._crc_upto -= self._pos
        self._crc_upto = max(self._crc_upto, 0)
        self._pos = 0

    def read(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._fill(n)
            if n > len(self._buf):
                raise RDBFormatError(f"RDB stream truncated at byte {self.offset + len(self._buf)}")
        data = self._buf[self._pos:self._pos + n]
        self._pos += n
        self.offset += n
        if self.capture is not None:
            self.capture.append(data)
        return data

    def byte(self) -> int:
        return self.read(1)[0]

    def crc_so_far(self) -> int:
        """CRC of every byte consumed so far."""
        if self._checksum and self._crc_upto < self._pos:
            self.crc = crc64(memoryview(self._buf)[self._crc_upto:self._pos], self.crc)
            self._crc_upto = self._pos
        return self.crc

    def stop_checksum(self) -> None:
        self.crc_so_far()
        self._checksum = False

    def read_length(self) -> tuple[int, bool]:
        """(value, is_encoded)."""
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return ((first & 0x3F) << 8) | self.byte(), False
        if kind == 2:
            if first == 0x80:
                return struct.unpack(">I", self.read(4))[0], False
            if first == 0x81:
                return struct.unpack(">Q", self.read(8))[0], False
            raise RDBFormatError(f"bad length byte 0x{first:02x} at byte {self.offset - 1}")
        return first & 0x3F, True

    def length(self) -> int:
        value, encoded = self.read_length()
        if encoded:
            raise RDBFormatError(f"unexpected encoded length at byte {self.offset}")
        return value

    def string(self) -> bytes:
        value, encoded = self.read_length()
        if not encoded:
            return self.read(value)
        if value == 0:
            return str(struct.unpack("<b", self.read(1))[0]).encode()
        if value == 1:
            return str(struct.unpack("<h", self.read(2))[0]).encode()
        if value == 2:
            return str(struct.unpack("<i", self.read(4))[0]).encode()
        if value == 3:
            clen = self.length()
            ulen = self.length()
            return lzf_decompress(self.read(clen), ulen)
        raise RDBFormatError(f"unknown string encoding {value} at byte {self.offset}")

    def skip_string(self) -> None:
        value, encoded = self.read_length()
        if not encoded:
            self.read(value)
        elif value == 0:
            self.read(1)
        elif value == 1:
            self.read(2)
        elif value == 2:
            self.read(4)
        elif value == 3:
            clen = self.length()
            self.length()
            self.read(clen)
        else:
            raise RDBFormatError(f"unknown string encoding {value} at byte {self.offset}")


def lzf_decompress(data: bytes, expected: int) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
        else:
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            if ref < 0:
                raise RDBFormatError("corrupt LZF data")
            for k in range(length + 2):
                out.append(out[ref + k])
    if len(out) != expected:
        raise RDBFormatError("corrupt LZF data (length mismatch)")
    return bytes(out)


class RDBReader:
    """Iterate over the keys of an RDB stream: `for rec in RDBReader(f): ...`.

    After the iteration: `version`, `aux` (dict of aux fields), `functions` (library code from
    FUNCTION2 records), `checksum_ok` (None when the file has no checksum or it was not
    checked), `resize` ({db: (keys, expires)}).
    """

    def __init__(self, fileobj: BinaryIO, verify_checksum: bool = True):
        self._in = _Input(fileobj, checksum=verify_checksum)
        self.verify_checksum = verify_checksum
        self.version = 0
        self.aux: dict[bytes, bytes] = {}
        self.functions: list[bytes] = []
        self.module_aux: list[bytes] = []
        self.resize: dict[int, tuple[int, int]] = {}
        self.checksum_ok: bool | None = None
        self.bytes_read = 0

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(self) -> Iterator[Record]:
        src = self._in
        magic = src.read(9)
        if magic[:5] != b"REDIS" or not magic[5:].isdigit():
            raise RDBFormatError("not an RDB file (no REDIS magic)")
        self.version = int(magic[5:])
        db = 0
        expire: int | None = None
        while True:
            op = src.byte()
            if op == OP_EOF:
                break
            if op == OP_SELECTDB:
                db = src.length()
                continue
            if op == OP_RESIZEDB:
                self.resize[db] = (src.length(), src.length())
                continue
            if op == OP_AUX:
                key = src.string()
                self.aux[key] = src.string()
                continue
            if op == OP_EXPIRETIME_MS:
                expire = struct.unpack("<q", src.read(8))[0]
                continue
            if op == OP_EXPIRETIME:
                expire = struct.unpack("<i", src.read(4))[0] * 1000
                continue
            if op == OP_FREQ:
                src.read(1)
                continue
            if op == OP_IDLE:
                src.length()
                continue
            if op == OP_SLOT_INFO:
                src.length(), src.length(), src.length()
                continue
            if op == OP_FUNCTION2:
                self.functions.append(src.string())
                continue
            if op == OP_MODULE_AUX:
                src.capture = []
                src.length()  # module id
                src.length()  # when opcode
                src.length()  # when
                self._skip_module_value()
                self.module_aux.append(b"".join(src.capture))
                src.capture = None
                continue
            if op == OP_FUNCTION_PRE_GA:
                raise RDBFormatError("RDB written by a Redis 7.0 release candidate (pre-GA functions)")
            key = src.string()
            src.capture = []
            try:
                self._skip_value(op)
            except RDBFormatError:
                raise
            raw = b"".join(src.capture)
            src.capture = None
            yield Record(db=db, key=key, type=op, raw=raw, expire_ms=expire)
            expire = None
        if self.version >= 5:
            computed = src.crc_so_far()
            src.stop_checksum()
            stored = struct.unpack("<Q", src.read(8))[0]
            if stored == 0 or not self.verify_checksum:
                self.checksum_ok = None
            else:
                self.checksum_ok = stored == computed
                if not self.checksum_ok:
                    raise RDBFormatError(
                        f"RDB checksum mismatch (stored {stored:016x}, computed {computed:016x})")
        self.bytes_read = src.offset

    def _skip_value(self, t: int) -> None:
        src = self._in
        if t in _SINGLE_STRING_TYPES:
            src.skip_string()
        elif t in (T_LIST, T_SET):
            for _ in range(src.length()):
                src.skip_string()
        elif t == T_HASH:
            for _ in range(src.length() * 2):
                src.skip_string()
        elif t == T_ZSET:
            for _ in range(src.length()):
                src.skip_string()
                n = src.byte()
                if n < 253:
                    src.read(n)
        elif t == T_ZSET_2:
            for _ in range(src.length()):
                src.skip_string()
                src.read(8)
        elif t == T_LIST_QUICKLIST:
            for _ in range(src.length()):
                src.skip_string()
        elif t == T_LIST_QUICKLIST_2:
            for _ in range(src.length()):
                src.length()  # container: 1 plain, 2 packed
                src.skip_string()
        elif t in (T_STREAM_LISTPACKS, T_STREAM_LISTPACKS_2, T_STREAM_LISTPACKS_3):
            self._skip_stream(t)
        elif t == T_MODULE_2:
            src.length()  # module id
            self._skip_module_value()
        elif t == T_MODULE:
            raise RDBFormatError("module value of RDB type 6 (module API v1) cannot be parsed generically")
        else:
            raise RDBFormatError(f"unknown RDB value type {t} at byte {src.offset}")

    def _skip_stream(self, t: int) -> None:
        src = self._in
        for _ in range(src.length()):
            src.skip_string()  # node key (master ID)
            src.skip_string()  # listpack
        src.length()  # items
        src.length(), src.length()  # last id
        if t >= T_STREAM_LISTPACKS_2:
            src.length(), src.length()  # first id
            src.length(), src.length()  # max deleted id
            src.length()  # entries added
        for _ in range(src.length()):  # consumer groups
            src.skip_string()
            src.length(), src.length()
            if t >= T_STREAM_LISTPACKS_2:
                src.length()  # entries read
            for _ in range(src.length()):  # global PEL
                src.read(16)
                src.read(8)
                src.length()
            for _ in range(src.length()):  # consumers
                src.skip_string()
                src.read(8)  # seen time
                if t >= T_STREAM_LISTPACKS_3:
                    src.read(8)  # active time
                for _ in range(src.length()):
                    src.read(16)

    def _skip_module_value(self) -> None:
        src = self._in
        while True:
            op = src.length()
            if op == MODULE_OP_EOF:
                return
            if op in (MODULE_OP_SINT, MODULE_OP_UINT):
                src.length()
            elif op == MODULE_OP_FLOAT:
                src.read(4)
            elif op == MODULE_OP_DOUBLE:
                src.read(8)
            elif op == MODULE_OP_STRING:
                src.skip_string()
            else:
                raise RDBFormatError(f"bad module value opcode {op}")


# --- writing (a filtered copy of an RDB) --------------------------------------------------------

@dataclass
class RDBWriter:
    """Write an RDB file from records: used to restore a subset of keys to a directory."""

    out: BinaryIO
    version: int
    _crc: int = 0
    _db: int | None = None
    written_keys: int = 0
    aux: dict[bytes, bytes] = field(default_factory=dict)

    def _w(self, data: bytes) -> None:
        self._crc = crc64(data, self._crc)
        self.out.write(data)

    def start(self) -> None:
        self._w(b"REDIS%04d" % self.version)
        for key, value in self.aux.items():
            self._w(bytes([OP_AUX]) + encode_string(key) + encode_string(value))

    def write(self, rec: Record) -> None:
        if rec.db != self._db:
            self._w(bytes([OP_SELECTDB]) + encode_length(rec.db))
            self._db = rec.db
        if rec.expire_ms is not None:
            self._w(bytes([OP_EXPIRETIME_MS]) + struct.pack("<q", rec.expire_ms))
        self._w(bytes([rec.type]) + encode_string(rec.key) + rec.raw)
        self.written_keys += 1

    def write_function(self, code: bytes) -> None:
        self._w(bytes([OP_FUNCTION2]) + encode_string(code))

    def finish(self) -> None:
        self._w(bytes([OP_EOF]))
        self.out.write(struct.pack("<Q", self._crc))
