"""What a backup source gives the engine: a sorted stream of tree entries, some with content.

A file tree yields its directories, files and symlinks; a database yields one or a few
virtual files whose content is a tool's output stream (pg_dump, pg_basebackup, an RDB). The
engine chunks, deduplicates, encrypts and stores every content stream the same way, so every
source gets deduplication, compression and verification for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, ContextManager, Iterator

if TYPE_CHECKING:
    from insite_console.events import CancelToken, ProgressReporter
    from insite_console.repo.tree import TreeReader


@dataclass
class Entry:
    """One node of a stored tree. `path` is relative and '/'-separated (no leading '/')."""

    path: str
    type: str  # "file" | "dir" | "symlink"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    inode: int = 0
    target: str | None = None  # symlink target, stored as read, never followed
    chunks: list[tuple[str, int]] | None = None  # (chunk id hex, plain length) of a file's content

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode,
                                "uid": self.uid, "gid": self.gid, "mtime_ns": self.mtime_ns}
        if self.type == "file":
            data["size"] = self.size
            data["inode"] = self.inode
            data["chunks"] = [[cid, size] for cid, size in (self.chunks or [])]
        elif self.type == "symlink":
            data["target"] = self.target
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Entry":
        chunks = data.get("chunks")
        return cls(
            path=data["path"], type=data["type"], mode=data.get("mode", 0o644),
            uid=data.get("uid", 0), gid=data.get("gid", 0), mtime_ns=data.get("mtime_ns", 0),
            size=data.get("size", 0), inode=data.get("inode", 0), target=data.get("target"),
            chunks=[(c[0], c[1]) for c in chunks] if chunks is not None else None,
        )


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
