"""One node of a stored tree: the JSON line a snapshot's listing holds per file, directory,
symlink or special file (docs/FORMAT.md). Sources build entries, the tree stores and reads
them, restores recreate them; it depends on nothing else of the engine."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


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
