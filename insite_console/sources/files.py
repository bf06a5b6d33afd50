"""File-tree source: walks the configured paths in tree order, reusing unchanged files.

Symlinks are stored, never followed; FIFOs and device files are stored as nodes, sockets are
skipped by name (as tar does). Extended attributes (ACLs, capabilities, SELinux labels
included), hard-link groups and sparseness are recorded. A file that vanishes or cannot be
read is reported as a warning and left out; a file that changes while it is read is stored
and reported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

from insite_console.globs import any_match
from insite_console.repo.tree import ParentLookup, sort_key
from insite_console.sources.base import Entry, Item, ScanContext, Source, point


#: a file whose mtime or ctime is this close to the scan's start may change again within the same
#: clock tick after it is read (git's "racy clean" case): it is marked and re-read by the next backup.
#: 2 s covers the coarsest common timestamps (FAT); finer ones are covered too.
RACY_NS = 2_000_000_000


def stored_path(absolute: str) -> str:
    return absolute.lstrip("/")


@dataclass
class _Scan:
    parent: ParentLookup
    racy_from_ns: int
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (dev, inode) -> first stored path


class FilesSource(Source):
    type = "files"

    def __init__(self, name: str, settings: dict[str, Any]):
        super().__init__(name, settings)
        roots = sorted({os.path.abspath(p) for p in settings["paths"]}, key=lambda p: sort_key(stored_path(p)))
        # a root inside another root is already covered
        self.roots = [r for r in roots if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in roots)]
        self.exclude = list(settings.get("exclude", []))
        self.one_file_system = bool(settings.get("one_file_system", False))

    def estimate_size(self) -> int:
        total = 0
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not any_match(self.exclude, os.path.join(dirpath, d))]
                for filename in filenames:
                    path = os.path.join(dirpath, filename)
                    if any_match(self.exclude, path):
                        continue
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        return total

    def scan(self, ctx: ScanContext) -> Iterator[Item]:
        ctx.moment()
        self._point = point("file walk started")
        state = _Scan(ParentLookup(ctx.parent), time.time_ns() - RACY_NS)
        emitted_dirs: set[str] = set()
        for root in self.roots:
            # the root's ancestors, so a restore recreates them with their modes
            parts = stored_path(root).split("/")
            for depth in range(1, len(parts)):
                ancestor = "/".join(parts[:depth])
                if ancestor and ancestor not in emitted_dirs:
                    emitted_dirs.add(ancestor)
                    entry = self._entry("/" + ancestor, ctx)
                    if entry is not None:
                        yield Item(entry)
            try:
                root_stat = os.lstat(root)
            except OSError as exc:
                ctx.warn(f"{root}: cannot read: {exc.strerror}")
                continue
            yield from self._visit(root, root_stat, root_stat.st_dev, state, ctx)

    def metadata(self) -> dict[str, Any]:
        return {"point": getattr(self, "_point", None)}

    def _entry(self, path: str, ctx: ScanContext, st: os.stat_result | None = None) -> Entry | None:
        try:
            st = st or os.lstat(path)
        except FileNotFoundError:
            ctx.warn(f"{path}: vanished before it could be read")
            return None
        except OSError as exc:
            ctx.warn(f"{path}: cannot stat: {exc.strerror}")
            return None
        entry = Entry(path=stored_path(path), type="file", mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                      gid=st.st_gid, mtime_ns=st.st_mtime_ns)
        if stat.S_ISDIR(st.st_mode):
            entry.type = "dir"
        elif stat.S_ISLNK(st.st_mode):
            entry.type = "symlink"
            try:
                entry.target = os.readlink(path)
            except OSError as exc:
                ctx.warn(f"{path}: cannot read link: {exc.strerror}")
                return None
        elif stat.S_ISREG(st.st_mode):
            entry.size = st.st_size
            entry.inode = st.st_ino
            entry.ctime_ns = st.st_ctime_ns
            entry.sparse = st.st_blocks * 512 < st.st_size
        elif stat.S_ISFIFO(st.st_mode):
            entry.type = "fifo"
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry.type = "chardev" if stat.S_ISCHR(st.st_mode) else "blockdev"
            entry.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISSOCK(st.st_mode):
            ctx.warn(f"{path}: skipped: a socket (sockets are not backed up, as with tar)")
            return None
        else:
            ctx.warn(f"{path}: skipped: not a regular file, directory, symlink, FIFO or device")
            return None
        if entry.type != "file":  # a file's are read by _visit, unless reused
            entry.xattrs = _read_xattrs(path, ctx)
        return entry

    def _visit(self, path: str, st: os.stat_result, device: int, state: _Scan,
               ctx: ScanContext) -> Iterator[Item]:
        ctx.cancel.check()
        entry = self._entry(path, ctx, st)
        if entry is None:
            return
        if entry.type == "file":
            # the ctime is compared too, so its tick is as racy as the mtime's (as borg does)
            entry.racy = max(entry.mtime_ns, entry.ctime_ns) >= state.racy_from_ns
            if st.st_nlink > 1:
                entry.hardlink = state.links.setdefault((st.st_dev, st.st_ino), entry.path)
                if entry.link_member:  # content and attributes are the leader's, stored once;
                    entry.chunks = []  # `open` only if the leader could not be read (it leads then)
                    yield Item(entry, open=lambda p=path, e=entry: _open_member(p, e, ctx))
                    return
            previous = state.parent.get(entry.path)
            if (previous is not None and previous.type == "file" and not previous.racy
                    and not previous.link_member and previous.size == entry.size
                    and previous.mtime_ns == entry.mtime_ns and previous.ctime_ns == entry.ctime_ns
                    and previous.inode == entry.inode and previous.chunks is not None):
                entry.chunks = previous.chunks
                entry.xattrs = previous.xattrs  # setting an xattr changes the ctime
            else:
                entry.xattrs = _read_xattrs(path, ctx)
            yield Item(entry, open=lambda p=path, e=entry: open_regular(p, e), path=path)
            return
        yield Item(entry)
        if entry.type != "dir":
            return
        if self.one_file_system and st.st_dev != device:
            return
        try:
            with os.scandir(path) as iterator:
                children = sorted(iterator, key=lambda d: os.fsencode(d.name))
        except FileNotFoundError:
            ctx.warn(f"{path}: directory vanished while being read")
            return
        except OSError as exc:
            ctx.warn(f"{path}: cannot list directory: {exc.strerror}")
            return
        for child in children:
            child_path = os.path.join(path, child.name)
            if self.exclude and any_match(self.exclude, child_path):
                continue
            try:
                child_stat = child.stat(follow_symlinks=False)
            except FileNotFoundError:
                ctx.warn(f"{child_path}: vanished before it could be read")
                continue
            except OSError as exc:
                ctx.warn(f"{child_path}: cannot stat: {exc.strerror}")
                continue
            yield from self._visit(child_path, child_stat, device, state, ctx)


def _read_xattrs(path: str, ctx: ScanContext) -> dict[str, bytes] | None:
    """All extended attributes the process may read: user.*, and as root trusted.* and
    security.*; ACLs are system.posix_acl_access/default."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
            ctx.warn(f"{path}: cannot list extended attributes: {exc.strerror}")
        return None
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOENT):
                ctx.warn(f"{path}: cannot read extended attribute {name}: {exc.strerror}")
    return values or None


#: how a scanned file is opened to be read: never following a symlink swapped in since the
#: scan, never blocking on a FIFO swapped in (then S_ISREG is checked on the descriptor)
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def open_regular(path: str, entry: Entry) -> Iterator[BinaryIO]:
    """Open without following a symlink swapped in since the scan, and without blocking on a
    FIFO swapped in (O_NONBLOCK, then S_ISREG on the descriptor); report a change after reading."""
    try:
        fd = os.open(path, _READ_FLAGS | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(path, _READ_FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "no longer a regular file (replaced since the scan); skipped", path)
    handle = os.fdopen(fd, "rb", buffering=0)
    try:
        yield handle
        after = os.fstat(fd)
        if after.st_mtime_ns != entry.mtime_ns or after.st_size != entry.size:
            raise FileChangedWhileReading(path)
    finally:
        handle.close()


def read_ahead(paths) -> None:
    """Ask the kernel to start reading each of the files at once (POSIX_FADV_WILLNEED), before
    they are read one by one: from a cold cache, each small file was otherwise one random read
    waited for in turn, two at a time with two backup workers (cold first backup of the bench
    tree, 4 interleaved runs each: 8.7-9.5 -> 6.6-7.4 s). Opened as `open_regular` opens;
    best effort: a file that cannot be opened here is named when it is read."""
    for path in paths:
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def _open_member(path: str, entry: Entry, ctx: ScanContext) -> Iterator[BinaryIO]:
    """A hard link read in place of its group's first file, which could not be read: its own
    extended attributes too, as that first file's would have been."""
    entry.xattrs = _read_xattrs(path, ctx)
    with open_regular(path, entry) as handle:
        yield handle


class FileChangedWhileReading(Exception):
    """Raised after a file was read whose size or mtime changed meanwhile; the content is kept."""
