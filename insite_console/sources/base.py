"""What a backup source gives the engine: a sorted stream of tree entries, some with content.

A file tree yields its directories, files and symlinks; a database yields one or a few
virtual files whose content is a tool's output stream (pg_dump, pg_basebackup, an RDB). The
engine chunks, deduplicates, encrypts and stores every content stream the same way, so every
source gets deduplication, compression and verification for free.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, ContextManager, Iterator

if TYPE_CHECKING:
    from insite_console.events import CancelToken, ProgressReporter
    from insite_console.repo.tree import TreeReader


SPECIAL_TYPES = ("fifo", "chardev", "blockdev")  # recreated by a restore, no content


@dataclass
class Entry:
    """One node of a stored tree. `path` is relative and '/'-separated (no leading '/').
    The optional fields are written only when set, so trees without them read as before."""

    path: str
    type: str  # "file" | "dir" | "symlink" | "fifo" | "chardev" | "blockdev"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    inode: int = 0
    target: str | None = None  # symlink target, stored as read, never followed
    chunks: list[tuple[str, int]] | None = None  # (chunk id hex, plain length) of a file's content
    ctime_ns: int = 0  # files: compared by incrementals (0: unknown, re-read)
    racy: bool = False  # files: mtime within the clock's granularity of the scan; re-read next time
    hardlink: str | None = None  # files: path of the group's first file in this tree (its own: the leader)
    sparse: bool = False  # files: had holes (fewer blocks than its size); zeros come back as holes
    rdev: tuple[int, int] | None = None  # devices: (major, minor)
    xattrs: dict[str, bytes] | None = None  # extended attributes, ACLs and capabilities included

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode,
                                "uid": self.uid, "gid": self.gid, "mtime_ns": self.mtime_ns}
        if self.type == "file":
            data["size"] = self.size
            data["inode"] = self.inode
            data["chunks"] = [[cid, size] for cid, size in (self.chunks or [])]
            if self.ctime_ns:
                data["ctime_ns"] = self.ctime_ns
            if self.racy:
                data["racy"] = True
            if self.hardlink is not None:
                data["hardlink"] = self.hardlink
            if self.sparse:
                data["sparse"] = True
        elif self.type == "symlink":
            data["target"] = self.target
        elif self.rdev is not None:
            data["rdev"] = list(self.rdev)
        if self.xattrs:
            data["xattrs"] = {name: base64.b64encode(value).decode() for name, value in self.xattrs.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Entry":
        chunks = data.get("chunks")
        xattrs = data.get("xattrs")
        rdev = data.get("rdev")
        return cls(
            path=data["path"], type=data["type"], mode=data.get("mode", 0o644),
            uid=data.get("uid", 0), gid=data.get("gid", 0), mtime_ns=data.get("mtime_ns", 0),
            size=data.get("size", 0), inode=data.get("inode", 0), target=data.get("target"),
            chunks=[(c[0], c[1]) for c in chunks] if chunks is not None else None,
            ctime_ns=data.get("ctime_ns", 0), racy=data.get("racy", False), hardlink=data.get("hardlink"),
            sparse=data.get("sparse", False), rdev=(rdev[0], rdev[1]) if rdev is not None else None,
            xattrs={name: base64.b64decode(value) for name, value in xattrs.items()} if xattrs else None,
        )

    @property
    def link_member(self) -> bool:
        """A hard link to an earlier file of the tree: its content is the leader's."""
        return self.hardlink is not None and self.hardlink != self.path


@dataclass
class Item:
    """An entry to store. If `open` is set the engine reads the content from it (and fills
    `entry.chunks` and `entry.size`); if `entry.chunks` is already set (an unchanged file in an
    incremental backup) the content is reused without reading."""

    entry: Entry
    open: Callable[[], ContextManager[BinaryIO]] | None = None


@dataclass
class ScanContext:
    """What a source may use while scanning."""

    parent: "TreeReader | None"  # the previous snapshot's tree (incremental/differential), else None
    reporter: "ProgressReporter"
    cancel: "CancelToken"
    warn: Callable[[str], None]  # a problem worth reporting that does not fail the backup
    backup_type: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)
    #: a group backup's restore point id (group.py), else None
    group: str | None = None
    #: called right before the source takes its snapshot; in a group it returns when every
    #: member is ready, so all of them take theirs at the same moment
    moment: Callable[[], None] = lambda: None


def point(what: str, **facts: Any) -> dict[str, Any]:
    """The instant a backup's data stands at (its snapshot), for the manifest's source_info."""
    from insite_console import clock

    return {"at": clock.iso_precise(clock.now()), "what": what, **facts}


class Source:
    """Base class of backup sources; one per `[source.NAME]` table."""

    type = "base"

    def __init__(self, name: str, settings: dict[str, Any]):
        self.name = name
        self.settings = settings

    def scan(self, ctx: ScanContext) -> Iterator[Item]:
        """Yield the entries in tree order (depth first, names sorted by their bytes)."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Called after the scan: facts for the manifest (baselines, LSNs, server version)."""
        return {}

    def estimate_size(self) -> int | None:
        """Bytes the scan will read, if cheaply known (for the progress bar)."""
        return None
