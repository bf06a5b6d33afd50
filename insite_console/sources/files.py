"""File-tree source: walks the configured paths in tree order, reusing unchanged files.

Symlinks are stored, never followed. A file that vanishes or cannot be read is reported as a
warning and left out; a file that changes while it is read is stored and reported.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any, BinaryIO, Iterator

from insite_console.globs import any_match
from insite_console.repo.tree import ParentLookup, sort_key
from insite_console.sources.base import Entry, Item, ScanContext, Source


def stored_path(absolute: str) -> str:
    return absolute.lstrip("/")


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
        parent = ParentLookup(ctx.parent)
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
            yield from self._visit(root, root_stat, root_stat.st_dev, parent, ctx)

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
        else:
            ctx.warn(f"{path}: skipped: not a regular file, directory or symlink")
            return None
        return entry

    def _visit(self, path: str, st: os.stat_result, device: int, parent: ParentLookup,
               ctx: ScanContext) -> Iterator[Item]:
        ctx.cancel.check()
        entry = self._entry(path, ctx, st)
        if entry is None:
            return
        if entry.type == "file":
            previous = parent.get(entry.path)
            if (previous is not None and previous.type == "file" and previous.size == entry.size
                    and previous.mtime_ns == entry.mtime_ns and previous.inode == entry.inode
                    and previous.chunks is not None):
                entry.chunks = previous.chunks
            yield Item(entry, open=lambda p=path, e=entry: _open_regular(p, e))
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
            yield from self._visit(child_path, child_stat, device, parent, ctx)


@contextlib.contextmanager
def _open_regular(path: str, entry: Entry) -> Iterator[BinaryIO]:
    """Open without following a symlink swapped in since the scan; report a change after reading."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(path, flags)
    handle = os.fdopen(fd, "rb", buffering=0)
    try:
        yield handle
        after = os.fstat(fd)
        if after.st_mtime_ns != entry.mtime_ns or after.st_size != entry.size:
            raise FileChangedWhileReading(path)
    finally:
        handle.close()


class FileChangedWhileReading(Exception):
    """Raised after a file was read whose size or mtime changed meanwhile; the content is kept."""
