"""A snapshot's tree: one JSON line per entry, stored through the chunker like any file.

Storing the listing as chunks (not inside the manifest) keeps manifests small, lets unchanged
parts of a listing deduplicate between backups, and lets the tree be read as a stream in
bounded memory however many files it has. Order: depth first, names sorted by their bytes,
a directory before its contents — so it can be merged with a walk of the live tree.
"""

from __future__ import annotations

import json
import tempfile
from typing import BinaryIO, Iterable, Iterator, Protocol

from insite_console.repo.entry import Entry
from insite_console.repo.objects import decode_tree_line
from insite_console.repo.packs import TREE


class ChunkStore(Protocol):
    """What a tree needs of a repository (repository.Repository): store a stream, read chunks."""

    def save_stream(self, fileobj: BinaryIO, method: str = ..., blob_type: int = ...) -> list[tuple[str, int]]: ...

    def open_chunks(self, chunks: Iterable[tuple[str, int]]) -> BinaryIO: ...


def sort_key(path: str) -> tuple[bytes, ...]:
    """The tree order: compare paths component by component, as bytes."""
    return tuple(part.encode("utf-8", "surrogateescape") for part in path.split("/"))


class TreeWriter:
    """Spools entries to a temporary file; `save` stores the listing and returns its chunks."""

    def __init__(self) -> None:
        # in memory up to 1 MiB (~4,000 entries), then a temporary file: a large listing would
        # otherwise sit in RAM for the whole backup, at its peak
        self._spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        self.count = 0

    def add(self, entry: Entry) -> None:
        line = json.dumps(entry.to_json(), separators=(",", ":"), ensure_ascii=True)
        self._spool.write(line.encode("ascii") + b"\n")
        self.count += 1

    def save(self, repo: ChunkStore, method: str = "zstd") -> list[tuple[str, int]]:
        self._spool.seek(0)
        chunks = repo.save_stream(self._spool, method, blob_type=TREE)
        self._spool.close()
        return chunks

    def close(self) -> None:
        self._spool.close()


def in_blocks(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    """Entries in lists of `size` (the last one shorter), for index lookups made a block at a time."""
    block: list[Entry] = []
    for entry in entries:
        block.append(entry)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


class TreeReader:
    """Iterates the entries of a stored tree, streaming."""

    def __init__(self, repo: ChunkStore, chunks: list[tuple[str, int]]):
        self._repo = repo
        self._chunks = [tuple(c) for c in chunks]

    def __iter__(self) -> Iterator[Entry]:
        stream = self._repo.open_chunks(self._chunks)
        for line in stream:
            if line.strip():
                yield Entry.from_json(decode_tree_line(line, "file listing"))


class ParentLookup:
    """Merge-join over a parent tree: `get(path)` for paths asked in tree order, in O(1) memory."""

    def __init__(self, parent: TreeReader | None):
        self._iter = iter(parent) if parent is not None else iter(())
        self._current: Entry | None = next(self._iter, None)

    def get(self, path: str) -> Entry | None:
        key = sort_key(path)
        while self._current is not None and sort_key(self._current.path) < key:
            self._current = next(self._iter, None)
        if self._current is not None and self._current.path == path:
            return self._current
        return None
