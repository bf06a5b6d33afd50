"""Redis: a consistent RDB snapshot fetched over the network, restored to a file or key by key.

Backup: the way `redis-cli --rdb` does it, we ask the server for a replication sync
(`REPLCONF rdb-only 1`, then `SYNC`) and stream the RDB it sends straight into the repository,
so no access to the server's disk is needed. When the server refuses replication (managed
services often do) and `data_dir` names its local data directory, we fall back to BGSAVE and
read the file it writes.

Restore:
- to a directory: writes `dump.rdb` (a filtered copy with `--include`); the printed procedure
  warns that a server with `appendonly yes` loads its AOF and ignores dump.rdb;
- to `redis://host:port[/db]`: key by key with RESTORE (absolute expiry kept, REPLACE only
  with `--yes`), pipelined; `--include 'session:*'` restores the matching keys only. DB
  numbers are kept; a db number in the target URL restricts the restore to that DB.
"""

from __future__ import annotations

import fnmatch
import io
import os
import socket
import ssl
import time
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator
from urllib.parse import unquote, urlsplit

from insite_console import clock
from insite_console.errors import RestoreRefused, SourceError, UsageError
from insite_console.sources.base import Entry, Item, ScanContext, Source, point
from insite_console.sources.rdb import RDBReader, RDBWriter, dump_payload

RDB_ENTRY = "dump.rdb"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # the server sends a newline every second while it prepares the RDB


# --- connection settings -------------------------------------------------------------------------

class RedisAddress:
    """host, port, db, user, password, tls parsed from a redis:// URL; `describe()` hides secrets."""

    def __init__(self, url: str, password_env: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise UsageError(f"{scrub_url(url)}: not a redis:// URL")
        self.tls = parts.scheme == "rediss"
        self.unix_path = parts.path if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        path = parts.path.strip("/") if parts.scheme != "unix" else ""
        self.db_explicit = path != ""
        try:
            self.db = int(path) if path else 0
        except ValueError:
            raise UsageError(f"{scrub_url(url)}: the path must be a database number, got {path!r}") from None
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        if password_env:
            value = os.environ.get(password_env)
            if value is None:
                raise SourceError(f"redis at {self.describe()}: environment variable {password_env} "
                                  "(password_env) is not set")
            self.password = value
        if self.password is None and os.environ.get("REDISCLI_AUTH"):
            self.password = os.environ["REDISCLI_AUTH"]

    def describe(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        try:
            if self.unix_path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(self.unix_path)
            else:
                sock = socket.create_connection((self.host, self.port), timeout=timeout)
                if self.tls:
                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            raise SourceError(f"cannot connect to redis at {self.describe()}: "
                              f"{exc.strerror or exc} (is the server running?)") from None
        return sock

    def client(self, db: int | None = None):
        import redis

        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs: dict[str, Any] = dict(db=self.db if db is None else db, password=self.password,
                                      username=self.username, socket_timeout=60,
                                      socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0))
        if self.unix_path:
            return redis.Redis(unix_socket_path=self.unix_path, **kwargs)
        return redis.Redis(host=self.host, port=self.port, ssl=self.tls, **kwargs)


def scrub_url(url: str) -> str:
    """The URL without its password, for messages."""
    from insite_console.redact import redact

    return redact(url)


def _command(*args: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _LineReader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def recv(self) -> bytes:
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise SourceError("redis: timed out waiting for the server") from None
        if not data:
            raise SourceError("redis: the server closed the connection")
        return data

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            self.buf += self.recv()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")


def parse_info(text: str) -> dict[str, Any]:
    """INFO reply -> dict; keyspace lines (db0:keys=1,expires=0,...) become dicts."""
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        if key.startswith("db") and key[2:].isdigit():
            info[key] = {k: int(v) if v.lstrip("-").isdigit() else v
                         for k, v in (part.split("=", 1) for part in value.split(",") if "=" in part)}
        else:
            info[key] = int(value) if value.lstrip("-").isdigit() else value
    return info


def _simple(reader: _LineReader, sock: socket.socket, *args) -> bytes:
    sock.sendall(_command(*args))
    return reader.line()


class SyncStream(io.RawIOBase):
    """The RDB payload of a SYNC reply: `$<len>` (disk) or `$EOF:<mark>` (diskless)."""

    def __init__(self, sock: socket.socket, reader: _LineReader, header: bytes, where: str):
        self.sock = sock
        self.where = where
        self.pending = reader.buf
        self.total = 0
        self.finished = False
        if header.startswith(b"$EOF:"):
            self.mark = header[5:]
            self.remaining = None
            self.tail = b""
            self.ready = b""
            self.eof = False
        else:
            self.mark = None
            self.remaining = int(header[1:])
            self.size = self.remaining

    def readable(self) -> bool:
        return True

    def _recv(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise SourceError(f"redis at {self.where}: timed out while receiving the RDB") from None
        except OSError as exc:
            raise SourceError(f"redis at {self.where}: connection lost while receiving the RDB: {exc}") from None
        if not data:
            raise SourceError(f"redis at {self.where}: connection closed after {self.total} bytes of the RDB "
                              "(the snapshot is incomplete)")
        return data

    def readinto(self, buffer) -> int:
        if self.finished:
            return 0
        if self.remaining is not None:
            if self.remaining == 0:
                self.finished = True
                return 0
            if not self.pending:
                self.pending = self._recv()
            n = min(len(buffer), self.remaining, len(self.pending))
            buffer[:n] = self.pending[:n]
            self.pending = self.pending[n:]
            self.remaining -= n
            self.total += n
            return n
        # diskless: everything up to the 40-byte mark; keep the last 40 bytes back
        mark_len = len(self.mark)
        while not self.ready and not self.eof:
            self.tail += self._recv()
            if self.tail.endswith(self.mark):
                self.ready = self.tail[:-mark_len]
                self.tail = b""
                self.eof = True
            elif len(self.tail) > mark_len:
                self.ready = self.tail[:-mark_len]
                self.tail = self.tail[-mark_len:]
        if not self.ready:
            self.finished = True
            return 0
        n = min(len(buffer), len(self.ready))
        buffer[:n] = self.ready[:n]
        self.ready = self.ready[n:]
        self.total += n
        return n


def _auth(addr: RedisAddress, sock: socket.socket, reader: _LineReader) -> None:
    if addr.password is None:
        return
    args = ("AUTH", addr.username, addr.password) if addr.username else ("AUTH", addr.password)
    reply = _simple(reader, sock, *args)
    if not reply.startswith(b"+"):
        raise SourceError(f"redis at {addr.describe()}: authentication failed "
                          f"({reply[1:].decode(errors='replace').split(' ', 1)[-1][:100]})")


def _read_reply(reader: _LineReader):
    """One RESP2 reply (enough for CONFIG GET): str, int, None, list, or an Exception for errors."""
    line = reader.line()
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode(errors="replace")
    if kind == b"-":
        return Exception(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        while len(reader.buf) < length + 2:
            reader.buf += reader.recv()
        data, reader.buf = reader.buf[:length], reader.buf[length + 2:]
        return data.decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return [_read_reply(reader) for _ in range(max(count, 0))]
    raise SourceError(f"redis: unexpected reply {line[:40]!r}")


def _diskless_without_delay(sock: socket.socket, reader: _LineReader) -> bool:
    """Is the server set for diskless sync with no waiting for more replicas? (CONFIG may be refused.)"""
    try:
        sock.sendall(_command("CONFIG", "GET", "repl-diskless-sync*"))
        reply = _read_reply(reader)
    except (SourceError, OSError, ValueError):
        return False
    if not isinstance(reply, list):
        return False
    settings = dict(zip(reply[::2], reply[1::2]))
    return settings.get("repl-diskless-sync") == "yes" and settings.get("repl-diskless-sync-delay") == "0"


@contextmanager
def open_sync_rdb(addr: RedisAddress, info: dict | None = None) -> Iterator[BinaryIO]:
    """Stream a consistent RDB from a live server over the replication protocol."""
    sock = addr.connect()
    try:
        reader = _LineReader(sock)
        _auth(addr, sock, reader)
        reply = _simple(reader, sock, "REPLCONF", "rdb-only", "1")
        if info is not None:
            info["rdb_only"] = reply.startswith(b"+")
        if _diskless_without_delay(sock, reader):
            # the server streams the RDB straight from its fork, without writing it to its disk
            if _simple(reader, sock, "REPLCONF", "capa", "eof").startswith(b"+") and info is not None:
                info["diskless"] = True
        sock.settimeout(READ_TIMEOUT)
        sock.sendall(b"SYNC\r\n")
        while True:
            if not reader.buf:
                reader.buf = reader.recv()
            # keepalive newlines while the server prepares the snapshot
            reader.buf = reader.buf.lstrip(b"\n")
            if not reader.buf:
                continue
            line = reader.line()
            if line.startswith(b"-"):
                raise SourceError(f"redis at {addr.describe()} refused SYNC: {line[1:].decode(errors='replace')}")
            if line.startswith(b"+"):  # +FULLRESYNC / +CONTINUE (PSYNC replies)
                continue
            if line.startswith(b"$"):
                break
            if line == b"":
                continue
            raise SourceError(f"redis at {addr.describe()}: unexpected reply to SYNC: {line[:60]!r}")
        stream = SyncStream(sock, reader, line, addr.describe())
        yield io.BufferedReader(stream, buffer_size=1 << 20)
        if not stream.finished and stream.remaining not in (None, 0):
            raise SourceError(f"redis at {addr.describe()}: the RDB was not read to its end")
    finally:
        sock.close()


# --- the source ----------------------------------------------------------------------------------

class RedisSource(Source):
    type = "redis"

    def __init__(self, name: str, settings: dict[str, Any]):
        super().__init__(name, settings)
        self._meta: dict[str, Any] = {}

    def _addr(self) -> RedisAddress:
        return RedisAddress(self.settings["url"], self.settings.get("password_env"))

    def server_info(self) -> dict[str, Any]:
        """INFO over a plain socket: fails fast, with one clear message, when the server is down."""
        addr = self._addr()
        sock = addr.connect()
        try:
            reader = _LineReader(sock)
            _auth(addr, sock, reader)
            sock.sendall(_command("INFO"))
            header = reader.line()
            if header.startswith(b"-"):
                text = header[1:].decode(errors="replace")
                if text.startswith(("NOAUTH", "WRONGPASS")):
                    raise SourceError(f"redis at {addr.describe()}: authentication failed ({text[:100]})")
                raise SourceError(f"redis at {addr.describe()}: INFO failed: {text[:200]}")
            length = int(header[1:])
            while len(reader.buf) < length + 2:
                reader.buf += reader.recv()
            body = reader.buf[:length].decode("utf-8", "replace")
        finally:
            sock.close()
        return parse_info(body)

    def scan(self, ctx: ScanContext) -> Iterator[Item]:
        info = self.server_info()
        baselines = {}
        for key, value in info.items():
            if key.startswith("db") and key[2:].isdigit() and isinstance(value, dict):
                baselines[key] = int(value.get("keys", 0))
        self._meta = {
            "baselines": baselines,
            "server_version": info.get("redis_version"),
            "aof_enabled": bool(info.get("aof_enabled")),
            "used_memory": info.get("used_memory"),
            "host": self._addr().describe(),
            "baselines_taken_at": clock.iso(clock.now()),
        }
        entry = Entry(path=RDB_ENTRY, type="file", mode=0o600, mtime_ns=time.time_ns())
        yield Item(entry=entry, open=lambda: self._open_rdb(ctx))

    @contextmanager
    def _open_rdb(self, ctx: ScanContext) -> Iterator[BinaryIO]:
        addr = self._addr()
        sync_info: dict = {}
        ctx.moment()
        self._meta["point"] = point("RDB snapshot requested")  # the server forks on SYNC / BGSAVE
        try:
            with open_sync_rdb(addr, sync_info) as stream:
                self._meta["method"] = "sync"
                yield _HeaderSniffer(stream, self._meta)
            return
        except SourceError as exc:
            data_dir = self.settings.get("data_dir")
            if not data_dir or "refused SYNC" not in str(exc):
                raise
            ctx.warn(f"{exc}; falling back to BGSAVE in {data_dir}")
        with self._bgsave_file(addr, data_dir) as stream:
            self._meta["method"] = "bgsave"
            yield _HeaderSniffer(stream, self._meta)

    @contextmanager
    def _bgsave_file(self, addr: RedisAddress, data_dir: str) -> Iterator[BinaryIO]:
        client = addr.client()
        try:
            deadline = time.monotonic() + 3600
            started = False
            while not started:  # BGSAVE forks before it replies: in progress until it is done
                try:
                    client.bgsave()
                    started = True
                except Exception as exc:
                    if "already in progress" not in str(exc):
                        raise SourceError(f"redis at {addr.describe()}: BGSAVE failed: {exc}") from None
                    time.sleep(0.2)  # a save someone else started: wait, then take our own
                if time.monotonic() > deadline:
                    raise SourceError(f"redis at {addr.describe()}: could not start BGSAVE within an hour")
            while True:
                persistence = client.info("persistence")
                if not persistence.get("rdb_bgsave_in_progress"):
                    break
                if time.monotonic() > deadline:
                    raise SourceError(f"redis at {addr.describe()}: BGSAVE did not finish within an hour")
                time.sleep(0.1)
            if persistence.get("rdb_last_bgsave_status") != "ok":
                raise SourceError(f"redis at {addr.describe()}: BGSAVE failed (rdb_last_bgsave_status "
                                  f"{persistence.get('rdb_last_bgsave_status')})")
            try:
                filename = client.config_get("dbfilename").get("dbfilename") or "dump.rdb"
            except Exception:
                filename = "dump.rdb"
        finally:
            client.close()
        path = os.path.join(data_dir, filename)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise SourceError(f"redis at {addr.describe()}: cannot read {path}: {exc.strerror}") from None
        with handle:
            yield handle

    def metadata(self) -> dict[str, Any]:
        return dict(self._meta)


class _HeaderSniffer(io.RawIOBase):
    """Pass-through reader noting the RDB version from the first bytes."""

    def __init__(self, inner: BinaryIO, meta: dict):
        self.inner = inner
        self.meta = meta
        self.head = b""
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        if not data:
            self.meta["rdb_bytes"] = self.total
            return b""
        if len(self.head) < 9:
            self.head += data[:9]
            if len(self.head) >= 9 and self.head.startswith(b"REDIS"):
                try:
                    self.meta["rdb_version"] = int(self.head[5:9])
                except ValueError:
                    pass
        self.total += len(data)
        return data


# --- restore -------------------------------------------------------------------------------------

AOF_WARNING = (
    "A Redis server with `appendonly yes` loads its AOF at startup and IGNORES dump.rdb. "
    "To load this snapshot: stop the server; set `appendonly no` in redis.conf (or move the "
    "appendonlydir away); copy dump.rdb into the server's `dir` under its `dbfilename`; start "
    "the server; check the keys; then, to go back to AOF, run `CONFIG SET appendonly yes` on "
    "the running server (it rewrites the AOF from the loaded data) and set `appendonly yes` in "
    "redis.conf again."
)


def _matches(key: bytes, includes: list[str]) -> bool:
    if not includes:
        return True
    text = key.decode("latin-1")
    return any(fnmatch.fnmatchcase(text, pattern) for pattern in includes)


def _find_rdb_entry(ctx) -> Any:
    for entry in ctx.entries():
        if entry.type == "file" and entry.path.endswith(".rdb"):
            return entry
    raise SourceError(f"backup {ctx.manifest.get('id')} holds no RDB file")


def restore(ctx) -> dict[str, Any]:
    """Restore an RDB backup: `ctx.target` is a directory or a redis:// URL."""
    target = str(ctx.target)
    entry = _find_rdb_entry(ctx)
    includes = list(ctx.includes or [])
    if target.startswith(("redis://", "rediss://", "unix://")):
        return _restore_live(ctx, entry, target, includes)
    return _restore_to_dir(ctx, entry, target, includes)


def _restore_to_dir(ctx, entry, target: str, includes: list[str]) -> dict[str, Any]:
    path = os.path.join(target, "dump.rdb")
    exists = os.path.lexists(path)
    plan = [{"action": "overwrite" if exists else "create", "type": "file", "path": path, "bytes": entry.size,
             "keys": "matching " + ", ".join(includes) if includes else "all"}]
    notes = [f"Put {path} in place of the server's RDB file (its `dir`/`dbfilename`) while the server is stopped.",
             AOF_WARNING]
    aof = sorted(name for name in (os.listdir(target) if os.path.isdir(target) else [])
                 if name == "appendonlydir" or name.endswith(".aof"))
    problems = []
    if aof and not ctx.yes:  # the server there runs with appendonly yes: it would never load dump.rdb
        problems.append(f"{target} holds an append-only file ({', '.join(aof)}): a Redis server started there loads "
                        "it and ignores dump.rdb, so the restored snapshot would silently not be loaded. "
                        + AOF_WARNING + f" Move {', '.join(aof)} away (or pass --yes once appendonly is off)")
    if ctx.dry_run:
        return {"files": 1, "bytes_written": 0, "plan": plan, "problems": problems,
                "notes": [f"pre-flight problem: {problem}" for problem in problems] + notes}
    if problems:
        raise RestoreRefused(problems[0])
    if exists and not ctx.yes:
        raise RestoreRefused(f"{path} exists; pass --yes to overwrite it")
    os.makedirs(target, exist_ok=True)
    temp = path + ".insite-tmp"
    written = 0
    keys = 0
    try:
        with ctx.open_entry(entry) as source, open(temp, "wb") as out:
            if not includes:
                while True:
                    ctx.cancel.check()
                    block = source.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    written += len(block)
                    ctx.reporter.advance(bytes_done=len(block))
            else:
                reader = RDBReader(source, verify_checksum=False)
                writer: RDBWriter | None = None
                for rec in reader:
                    if writer is None:
                        writer = RDBWriter(out, reader.version, aux=dict(reader.aux))
                        writer.start()
                        for code in reader.functions:
                            writer.write_function(code)
                    ctx.cancel.check()
                    if _matches(rec.key, includes):
                        writer.write(rec)
                        keys += 1
                if writer is None:
                    writer = RDBWriter(out, reader.version or 10, aux=dict(reader.aux))
                    writer.start()
                writer.finish()
                written = out.tell()
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    result = {"files": 1, "bytes_written": written, "notes": notes}
    if includes:
        result["keys"] = keys
    return result


def _password_hint(password_from: str | None, source_env: str | None) -> str:
    """Which password a target restore sent, so an auth failure says what to fix."""
    if password_from:
        return f"sent {password_from}"
    hint = ("no password was sent (none in the target URL, no --target-password-env, no $REDISCLI_AUTH)")
    if source_env:
        hint += (f"; the source's password_env {source_env} is not used for a target server: pass "
                 f"--target-password-env {source_env} if the target shares it")
    return hint


def _restore_live(ctx, entry, target: str, includes: list[str]) -> dict[str, Any]:
    settings = _source_settings(ctx)
    own_env = ctx.options.get("target_password_env")
    addr = RedisAddress(target, own_env)  # never the source's password_env: another server, its own secret
    if own_env:
        password_from = f"the password from ${own_env} (--target-password-env)"
    elif urlsplit(target).password:
        password_from = "the password in the target URL"
    else:
        password_from = "$REDISCLI_AUTH" if addr.password is not None else None
    only_db = addr.db if addr.db_explicit else None
    clients: dict[int, Any] = {}

    def client(db: int):
        if db not in clients:
            clients[db] = addr.client(db)
        return clients[db]

    import redis

    try:
        client(only_db or 0).ping()
    except redis.AuthenticationError as exc:
        raise SourceError(f"redis at {addr.describe()}: authentication failed ({exc}); "
                          + _password_hint(password_from, settings.get("password_env"))) from None
    except redis.ConnectionError as exc:
        raise SourceError(f"cannot connect to redis at {addr.describe()}: {exc} (is the server running?)") from None
    except redis.ResponseError as exc:
        raise SourceError(f"redis at {addr.describe()}: {exc}") from None

    def selected(rec) -> bool:
        return (only_db is None or rec.db == only_db) and _matches(rec.key, includes)

    other_dbs: set[int] = set()

    def records():
        with ctx.open_entry(entry) as source:
            reader = RDBReader(source, verify_checksum=False)
            for rec in reader:
                ctx.cancel.check()
                if selected(rec):
                    yield reader, rec
                elif only_db is not None and rec.db != only_db:
                    other_dbs.add(rec.db)

    def skipped_note() -> list[str]:
        if not other_dbs:
            return []
        return [f"the backup also holds keys in {', '.join(f'db{d}' for d in sorted(other_dbs))}, not restored: "
                f"the target URL names db{only_db} (leave out the /N to restore every DB under its own number)"]

    # Pass 1 (only when needed): which keys exist already?
    non_empty = [db for db in _target_dbs(client, only_db) if client(db).dbsize() > 0]
    existing: dict[int, int] = {}
    existing_sample: list[str] = []
    counts: dict[int, int] = {}
    if non_empty or ctx.dry_run:
        batch: list = []

        def check(batch):
            by_db: dict[int, list] = {}
            for rec in batch:
                by_db.setdefault(rec.db, []).append(rec)
            for db, recs in by_db.items():
                if db not in non_empty:
                    continue
                pipe = client(db).pipeline(transaction=False)
                for rec in recs:
                    pipe.exists(rec.key)
                for rec, found in zip(recs, pipe.execute()):
                    if found:
                        existing[db] = existing.get(db, 0) + 1
                        if len(existing_sample) < 20:
                            existing_sample.append(f"db{db}:{rec.key.decode('utf-8', 'replace')}")

        for _reader, rec in records():
            counts[rec.db] = counts.get(rec.db, 0) + 1
            batch.append(rec)
            if len(batch) >= 1000:
                check(batch)
                batch = []
        if batch:
            check(batch)
    if ctx.dry_run:
        plan = []
        for db in sorted(counts):
            plan.append({"action": "restore", "type": "db", "path": f"db{db}", "bytes": 0, "keys": counts[db],
                         "overwrite": existing.get(db, 0)})
        for name in existing_sample:
            plan.append({"action": "overwrite", "type": "key", "path": name, "bytes": 0})
        target_keys = {f"db{db}": client(db).dbsize() for db in non_empty}
        _close(clients)
        return {"files": sum(counts.values()), "bytes_written": 0, "plan": plan, "target_keys": target_keys,
                "notes": [f"target redis at {addr.describe()} (authentication: {password_from or 'no password'})"]
                + skipped_note()}
    if existing and not ctx.yes:
        _close(clients)
        total = sum(existing.values())
        raise RestoreRefused(
            f"redis at {addr.describe()}: {total} of the keys to restore exist already "
            f"(e.g. {', '.join(existing_sample[:5])}); pass --yes to replace them")

    # A platform recovery brings the database back as it was: keys made after the backup go too
    # (options["replace_all"], with --yes and no key patterns); a plain restore only adds and replaces.
    if ctx.options.get("replace_all") and ctx.yes and not includes:
        for db in non_empty:
            client(db).flushdb()

    # Pass 2: RESTORE, pipelined.
    now_ms = int(time.time() * 1000)
    restored: dict[int, int] = {}
    expired = 0
    errors: list[str] = []
    written = 0
    pending: dict[int, list] = {}
    pending_bytes = 0

    def flush():
        nonlocal pending_bytes
        for db, items in pending.items():
            if not items:
                continue
            pipe = client(db).pipeline(transaction=False)
            for key, ttl, payload in items:
                args = ["RESTORE", key, ttl, payload]
                if ttl:
                    args.append("ABSTTL")
                if ctx.yes:
                    args.append("REPLACE")
                pipe.execute_command(*args)
            results = pipe.execute(raise_on_error=False)
            for (key, _ttl, _payload), result in zip(items, results):
                if isinstance(result, Exception):
                    if len(errors) < 10:
                        errors.append(f"db{db}:{key.decode('utf-8', 'replace')}: {result}")
                    else:
                        errors.append("")
                else:
                    restored[db] = restored.get(db, 0) + 1
            items.clear()
        pending_bytes = 0

    functions: list[bytes] = []
    for reader, rec in records():
        functions = reader.functions
        if rec.expire_ms is not None and rec.expire_ms <= now_ms:
            expired += 1
            continue
        payload = dump_payload(rec.type, rec.raw, reader.version)
        pending.setdefault(rec.db, []).append((rec.key, rec.expire_ms or 0, payload))
        pending_bytes += len(payload)
        written += len(payload)
        ctx.reporter.advance(bytes_done=len(payload), files_done=1)
        if pending_bytes > (4 << 20) or sum(len(v) for v in pending.values()) >= 1000:
            flush()
    flush()
    if functions and not includes:  # Redis 7 function libraries travel in the RDB
        for code in functions:
            try:
                args = ["FUNCTION", "LOAD"] + (["REPLACE"] if ctx.yes else []) + [code]
                client(only_db or 0).execute_command(*args)
            except Exception as exc:
                errors.append(f"function library: {exc}")

    # Baselines: the figures of the backup next to the target's now.
    baselines = (ctx.manifest.get("source_info") or {}).get("baselines") or {}
    comparison = []
    for db in sorted(set(restored) | {int(k[2:]) for k in baselines if k[2:].isdigit()}):
        if only_db is not None and db != only_db:
            continue
        try:
            now_keys = client(db).dbsize()
        except Exception:
            now_keys = None
        comparison.append({"object": f"db{db}", "backup": baselines.get(f"db{db}"), "restored": restored.get(db, 0),
                           "target_now": now_keys})
    _close(clients)
    if errors:
        shown = [e for e in errors if e]
        raise SourceError(f"redis at {addr.describe()}: {len(errors)} keys failed to restore: " + "; ".join(shown[:5]))
    result = {"files": sum(restored.values()), "bytes_written": written, "baselines": comparison,
              "notes": [f"restored {sum(restored.values())} keys into redis at {addr.describe()} (authentication: "
                        f"{password_from or 'no password'})"
                        + (f"; skipped {expired} keys that have expired since the backup" if expired else "")]
              + skipped_note()}
    return result


def _target_dbs(client, only_db: int | None) -> list[int]:
    if only_db is not None:
        return [only_db]
    try:
        info = client(0).info("keyspace")
    except Exception:
        return [0]
    return sorted(int(k[2:]) for k in info if k.startswith("db") and k[2:].isdigit()) or [0]


def _close(clients: dict) -> None:
    for c in clients.values():
        try:
            c.close()
        except Exception:
            pass


def _source_settings(ctx) -> dict:
    for attr in ("source_settings", "settings"):
        value = getattr(ctx, attr, None)
        if isinstance(value, dict):
            return value
    ws = getattr(ctx, "ws", None) or getattr(ctx, "workspace", None)
    name = ctx.manifest.get("source")
    if ws is not None and name in getattr(ws.config, "sources", {}):
        return ws.config.sources[name]
    return {}
