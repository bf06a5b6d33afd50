"""What a backup source gives the engine: a sorted stream of tree entries, some with content.

A file tree yields its directories, files and symlinks; a database yields one or a few
virtual files whose content is a tool's output stream (pg_dump, pg_basebackup, an RDB). The
engine chunks, deduplicates, encrypts and stores every content stream the same way, so every
source gets deduplication, compression and verification for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, ContextManager, Iterator

from insite_console.repo.entry import Entry  # noqa: F401 - what sources build their items of

if TYPE_CHECKING:
    from insite_console.events import CancelToken, ProgressReporter
    from insite_console.repo.tree import TreeReader


@dataclass
class Item:
    """An entry to store. If `open` is set the engine reads the content from it (and fills
    `entry.chunks` and `entry.size`); if `entry.chunks` is already set (an unchanged file in an
    incremental backup) the content is reused without reading."""

    entry: Entry
    open: Callable[[], ContextManager[BinaryIO]] | None = None
    #: a regular file's absolute path, when a worker process may open and read it itself
    #: (`sources.files.open_regular` with the entry): set by the files source
    path: str | None = None


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
