"""Run one backup: scan a source, store new content, write the manifest, record it.

The order of writes is what makes a crash harmless: data packs, then the index, then the
manifest, and only then the catalog says `succeeded`. A run killed anywhere before the
manifest leaves packs that the next run of the policy indexes and reuses
(repo.recover_unindexed_packs, when the catalog says a run was interrupted),
and a catalog row that the next process marks failed (Catalog.reap_dead_runs).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from insite_console import clock, workers
from insite_console.catalog.db import public_backup
from insite_console.errors import Cancelled, InsiteError, PolicyBusy
from insite_console.events import CancelToken, ProgressCallback, ProgressReporter, catalog_writer
from insite_console.repo.crypto import Cipher
from insite_console.repo.repository import MANIFEST_VERSION, PendingStream, Repository, seal_blob
from insite_console.repo.tree import TreeReader, TreeWriter, in_blocks
from insite_console.sources import make_source
from insite_console.repo.entry import Entry
from insite_console.sources.base import Item, ScanContext
from insite_console.sources.files import FileChangedWhileReading, open_regular, read_ahead

MAX_WARNINGS_KEPT = 200


def choose_parent(catalog, policy_name: str, storage: str, backup_type: str) -> dict | None:
    """Incremental: the last successful backup of the policy; differential: the last full."""
    if backup_type == "full":
        return None
    types = ["full"] if backup_type == "differential" else None
    parent = catalog.last_backup(policy_name, types=types)
    if parent is not None and parent["storage"] != storage:
        return None
    return parent


def run(ws, policy_name: str, backup_type: str | None = None, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None, group: tuple[str, Callable[[], None]] | None = None) -> dict[str, Any]:
    """Run one backup of a policy now; returns the contract's JSON object for it. One run per
    policy at a time: a second one, from any process on any host, is refused naming the one that
    runs. The catalog's claim answers fast for the processes of this catalog; the policy lock in
    the repository (repo/locks.PolicyLock) holds across hosts with catalogs of their own.
    `group`: (the group restore point's id, the moment to wait for before the snapshot), when
    the backup is a member of a group backup (group.py)."""
    ws.config.policy(policy_name)
    backup_id = clock.new_id()
    holder = ws.catalog.claim_policy(policy_name, backup_id)
    if holder is not None:
        age = (clock.now() - clock.parse_iso(holder["started_at"])).total_seconds()
        raise PolicyBusy(f"a backup of {policy_name} is already running: pid {holder['pid']} on host "
                         f"{holder['host']}, user {holder['user']}, for {clock.human_duration(age)} "
                         f"(run {holder['run_id']}); not starting another")
    try:
        with contextlib.ExitStack() as held:
            lock_error = None
            try:
                held.enter_context(policy_lock(ws, policy_name, policy_name, f"a backup of {policy_name}"))
            except PolicyBusy:
                raise
            except Exception as exc:  # the storage does not answer: the run fails on it, on record
                lock_error = exc
            return _run(ws, policy_name, backup_id, backup_type, progress, cancel, group, lock_error)
    finally:
        ws.catalog.release_policy(policy_name, backup_id)


def policy_lock(ws, job: str, policy_name: str, purpose: str):
    """The cross-host lock of `job` (the policy's name for its backups) on the policy's storage.
    It is one job only for the same policy of the same source (type, paths, DSN or URL): hosts
    whose policies share a name but back up other folders or servers never wait for each other."""
    import json

    from insite_console.repo.locks import PolicyLock

    policy = ws.config.policy(policy_name)
    source = ws.config.sources[policy["source"]]
    where = [source["type"], sorted(source.get("paths", [])), source.get("dsn"), source.get("url")]
    return PolicyLock(ws.storage(policy["storage"]), json.dumps([job, where]), purpose)


def _run(ws, policy_name: str, backup_id: str, backup_type: str | None, progress: ProgressCallback | None,
         cancel: CancelToken | None, group: tuple[str, Callable[[], None]] | None = None,
         lock_error: BaseException | None = None) -> dict[str, Any]:
    policy = ws.config.policy(policy_name)
    source_name, storage_name = policy["source"], policy["storage"]
    source_settings = ws.config.sources[source_name]
    cancel = cancel or CancelToken()
    catalog = ws.catalog
    backup_type = backup_type or policy["type"]
    parent = choose_parent(catalog, policy_name, storage_name, backup_type)
    if parent is None and backup_type != "full":
        backup_type = "full"
    started = clock.now()
    catalog.start_run(backup_id, "backup", policy_name)
    catalog.insert_backup({
        "id": backup_id, "policy": policy_name, "source": source_name, "source_type": source_settings["type"],
        "storage": storage_name, "type": backup_type, "status": "running", "started_at": clock.iso(started),
        "started_at_precise": clock.iso_precise(started), "host": socket.gethostname(),
        "parent_id": parent["id"] if parent else None, "run_id": backup_id,
    })
    catalog.event(backup_id, f"{backup_type} backup of {policy_name} to {storage_name} started"
                  + (f" (parent {parent['id']})" if parent else ""))
    reporter = ProgressReporter("backup", [progress, catalog_writer(catalog, backup_id)])
    reporter.update(run_id=backup_id, phase="opening", force=True)
    warnings: list[str] = []
    repo: Repository | None = None
    held = contextlib.ExitStack()
    try:
        if lock_error is not None:
            raise lock_error
        ws.config.check_source_paths(source_name)
        repo = ws.repository(storage_name)
        lock = held.enter_context(repo.lock(f"backup of {policy_name}"))
        # packs no index names: left by a killed run, or named only by a damaged index object
        if repo.damaged_indexes or catalog.interrupted_since_success(policy_name):
            recovered, unreadable = repo.recover_unindexed_packs()
            if recovered:
                catalog.event(backup_id, f"indexed {recovered} pack(s) left by an interrupted run; their data is reused")
            if unreadable:
                catalog.event(backup_id, f"{len(unreadable)} pack(s) on storage cannot be read and are not indexed "
                              f"(left for prune): {', '.join(unreadable[:3])}", level="warning")
        parent_tree = parent_manifest = None
        if parent is not None:
            parent_manifest = repo.load_manifest(parent["id"])
            parent_tree = KnownAhead(repo, TreeReader(repo, parent_manifest["tree"]))
        source = make_source(source_name, source_settings)

        def warn(message: str) -> None:
            if len(warnings) < MAX_WARNINGS_KEPT:
                warnings.append(message)
            catalog.event(backup_id, message, level="warning")

        extra: dict[str, Any] = {}
        if source_settings["type"] == "postgresql":  # a base backup from a standby waits for its stop segment
            from insite_console import wal

            extra["wal_archived"] = lambda name: wal.is_archived(ws, source_name, name)
        ctx = ScanContext(parent=parent_tree, reporter=reporter, cancel=cancel, warn=warn, backup_type=backup_type,
                          extra=extra)
        if group is not None:
            ctx.group, ctx.moment = group
        if parent_manifest is None or source_settings["type"] != "files":
            _start_size_estimate(source, reporter)
        else:  # the parent's size: a second walk of the tree beside the scan cost a sixth of its time
            parent_totals = parent_manifest.get("totals") or {}
            reporter.update(bytes_total=parent_totals.get("bytes_read", 0) + parent_totals.get("bytes_reused", 0))
        stored_before = repo.stats["bytes_stored"]
        reporter.update(phase="reading", force=True)
        totals = _store_items(repo, source, ctx, policy["compression"], reporter, warn,
                              workers.process_count(ws.config.engine))
        cancel.check()
        # everything is read: the total is known now (the estimate, passed by a tree that grew, was dropped)
        reporter.update(phase="finishing", current="", bytes_total=reporter.current.bytes_done, force=True)
        repo.flush()
        tree_chunks = totals.pop("tree").save(repo)
        repo.flush()
        finished = clock.now()
        totals["bytes_stored"] = repo.stats["bytes_stored"] - stored_before
        manifest = {
            "version": MANIFEST_VERSION, "id": backup_id, "policy": policy_name, "source": source_name,
            "source_type": source_settings["type"], "type": backup_type,
            "parent_id": parent["id"] if parent else None, "started_at": clock.iso(started),
            "started_at_precise": clock.iso_precise(started), "finished_at": clock.iso(finished),
            "hostname": socket.gethostname(),
            "paths": source_settings.get("paths", []), "compression": policy["compression"],
            "tree": tree_chunks, "totals": totals, "source_info": source.metadata(), "warnings": warnings,
        }
        if group is not None:
            manifest["group_point"] = group[0]
        repo.commit_manifest(manifest, lock)
        catalog.update_backup(backup_id, status="succeeded", finished_at=clock.iso(finished),
                              bytes_read=totals["bytes_read"], bytes_stored=totals["bytes_stored"],
                              files=totals["files"], repo_id=repo.id,
                              info={"totals": totals, "warnings": warnings[:20], "source_info": manifest["source_info"]})
        catalog.add_backup_storage(backup_id, storage_name)
        catalog.finish_run(backup_id, "succeeded")
        catalog.event(backup_id, f"backup {backup_id} succeeded: {totals['files']} files, "
                      f"{totals['bytes_read']} bytes read, {totals['bytes_stored']} stored"
                      + (f", {len(warnings)} warning(s)" if warnings else ""))
        reporter.update(phase="done", force=True)
    except BaseException as exc:
        if repo is not None:
            repo.abandon()
        status = "cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "failed"
        message = str(exc) if isinstance(exc, InsiteError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        catalog.update_backup(backup_id, status=status, error=message, finished_at=clock.iso(clock.now()))
        catalog.finish_run(backup_id, status, message)
        # a cancel is not an error (README, Live jobs): it is listed, marked as a warning
        catalog.event(backup_id, f"backup {backup_id} {status}: {message}",
                      level="warning" if status == "cancelled" else "error")
        reporter.update(phase=status, message=message, force=True)
        raise
    finally:
        held.close()
    checks = _after_backup(ws, policy, backup_id, warnings, cancel)
    result = public_backup(catalog.backup(backup_id), catalog.backup_storages(backup_id))
    result["warnings"] = warnings
    result.update(checks)
    return result


def _after_backup(ws, policy: dict, backup_id: str, warnings: list[str], cancel: CancelToken) -> dict[str, Any]:
    """What the policy asks after a backup: `verify` (quick) and `copy_to` (off-site copies).
    A backup whose verification finds problems is not a restore point: it is marked failed. A
    failed copy is a warning and an error event; the backup stays a restore point."""
    from insite_console import copy, verify

    outcome: dict[str, Any] = {}
    if policy.get("verify"):
        check = verify.run(ws, backup_id, cancel=cancel)
        outcome["verification"] = {"status": check["status"], "problems": check["problems"]}
        if check["status"] != "ok":
            message = f"verify after backup failed: {check['problems'][0]}"
            ws.catalog.update_backup(backup_id, status="failed", error=message)
            ws.catalog.event(backup_id, f"backup {backup_id} is not a restore point: {message}", level="error")
            return outcome  # nothing worth copying
    for storage in policy.get("copy_to", []):
        try:
            copy.run(ws, backup_id, storage, cancel=cancel)
        except Cancelled:
            raise
        except InsiteError as exc:
            warnings.append(f"copy to {storage} failed: {exc}")
            ws.catalog.event(backup_id, f"copy of {backup_id} to {storage} failed: {exc}", level="error")
    return outcome


def _start_size_estimate(source, reporter: ProgressReporter) -> None:
    """Count the bytes to read in the background, so progress gets a total and an ETA."""

    def estimate() -> None:
        try:
            total = source.estimate_size()
        except Exception:
            return
        if total is not None:
            reporter.update(bytes_total=total)

    threading.Thread(target=estimate, name="insite-estimate", daemon=True).start()


class KnownAhead:
    """A parent tree read in blocks of entries, with each block's chunks looked up in the index
    in a few queries (not one per chunk: 24,000 unchanged files cost 0.4 s warm, 0.7 s cold).
    `ids` holds the indexed chunks of the block being read; the scan asks in the same order,
    so a block's ids are replaced only once the scan is past it."""

    BLOCK = 512

    def __init__(self, repo: Repository, parent: TreeReader):
        self._repo = repo
        self._parent = parent
        self.ids: set[bytes] = set()

    def __iter__(self):
        for block in in_blocks(self._parent, self.BLOCK):
            yield from self._with_ids(block)
        self.ids = set()  # past the parent: the scan asks the index itself

    def _with_ids(self, block: list[Entry]):
        self.ids = self._repo.index.has_many(
            bytes.fromhex(cid) for entry in block if entry.type == "file" for cid, _ in entry.chunks or [])
        yield from block


#: large files read at once (small ones are read by the worker processes): a second reader
#: measured no faster and held ~10 MiB more of read blocks at the backup's peak
SOURCE_READERS = 1
#: files being read (by the threads or in workers' batches): enough to keep every worker busy
FILES_IN_FLIGHT = 160
#: entries (of any kind) waiting behind the oldest unfinished file: a slow file must not let the
#: scan queue thousands of reused files and directories behind it
ENTRIES_IN_FLIGHT = 512
#: entries waiting behind a small file whose batch is still open: send that batch, so the
#: worker reads while the scan goes on (an incremental's few changed files would otherwise be
#: sent only once ENTRIES_IN_FLIGHT wait, the scan stopped for each round trip)
SEND_BEHIND = ENTRIES_IN_FLIGHT // 2


def _read_item(repo: Repository, item, method: str, reporter: ProgressReporter,
               cancel: CancelToken) -> tuple[PendingStream | None, str | None]:
    """Read one item's content into the pipeline (in a reader thread): the pending content,
    and a warning for the operator if something went wrong that does not fail the backup."""
    pending = None
    try:
        with item.open() as handle:
            pending = repo.submit_stream(handle, method, on_bytes=lambda n: reporter.advance(n), cancel=cancel)
        return pending, None
    except FileChangedWhileReading:
        return pending, _changed_warning("/" + item.entry.path)
    except OSError as exc:
        return None, _unreadable_warning("/" + item.entry.path, exc)


def _changed_warning(path: str) -> str:
    return f"{path}: changed while being read; the stored copy may mix old and new content"


def _unreadable_warning(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path}: vanished before it could be read"
    if isinstance(exc, PermissionError):
        return f"{path}: cannot read: {exc.strerror}"
    if isinstance(exc, IsADirectoryError):
        return f"{path}: replaced by a directory while being read"
    return f"{path}: read error: {exc.strerror or exc}"


def _seal_small_files(jobs: list[tuple[str, Entry, str]]) -> list:
    """In a worker process: read, hash and seal each small file whole (one chunk). Per file:
    ("stored", chunk or None for an empty file, warning), ("unread", warning), or ("larger",)
    for a file grown past a chunk since the scan, which the parent reads itself."""
    if "cipher" not in workers.state:
        workers.state["cipher"] = Cipher(workers.state["encryption_key"])
    cipher, mac_key = workers.state["cipher"], workers.state["mac_key"]
    answers: list = []
    read_ahead(path for path, _, _ in jobs)
    for path, entry, method in jobs:
        data, warning = b"", None
        try:
            with open_regular(path, entry) as handle:
                data = handle.read(workers.SMALL_FILE + 1)
        except FileChangedWhileReading:
            warning = _changed_warning("/" + entry.path)
        except OSError as exc:
            answers.append(("unread", _unreadable_warning("/" + entry.path, exc)))
            continue
        if len(data) > workers.SMALL_FILE:
            answers.append(("larger",))
            continue
        chunk = None
        if data:
            blob_id = hmac.digest(mac_key, data, "sha256")
            chunk = (blob_id, len(data), seal_blob(cipher, blob_id, data, method))
        answers.append(("stored", chunk, warning))
    return answers


class _Stored:
    """Content already stored: what `PendingStream` gives once its chunks are done."""

    def __init__(self, chunks: list[tuple[str, int]], size: int):
        self._chunks, self.size = chunks, size

    def done(self) -> bool:
        return True

    def result(self) -> list[tuple[str, int]]:
        return self._chunks


class _SmallFile:
    """A file a worker process reads and seals: packed once its batch is back (`_Packing`), and
    written to the tree in the same order and with the same warnings as a file read by the
    threads."""

    def __init__(self, handle, packing: "_Packing", item: Item, method: str, reporter: ProgressReporter,
                 cancel: CancelToken):
        self._handle, self._packing, self._item, self._method = handle, packing, item, method
        self._reporter, self._cancel = reporter, cancel
        self.answer = None  # the worker's, once packed; the chunk then holds its id, not content
        packing.waiting.append(self)

    def done(self) -> bool:
        return self.answer is not None or self._handle.done()

    def send(self) -> None:
        self._handle.send()

    def result(self) -> tuple[_Stored | PendingStream | None, str | None]:
        if self.answer is None:
            self._handle.wait()
            self._packing.pack_ready()  # this file and every other one back by now
            if self.answer is None:  # a file before it still out (the tree takes them in order)
                self._packing.pack([self])
        answer = self.answer
        if answer[0] == "larger":
            return _read_item(self._packing.repo, self._item, self._method, self._reporter, self._cancel)
        if answer[0] == "unread":
            return None, answer[1]
        _, chunk, warning = answer
        if chunk is None:
            return _Stored([], 0), warning
        return _Stored([chunk], chunk[1]), warning


class _Packing:
    """Small files sent to the workers, in order, until packed. Their sealed chunks are packed
    as soon as their batch is back, out of the tree's order (what waits behind a large file then
    holds chunk ids, not content), every file that is back at once: one index query for them
    all. (When the tree waited for a file, that file was packed alone: a first backup of the
    bench tree made 3,594 index queries, 1,129 now.)"""

    def __init__(self, repo: Repository, reporter: ProgressReporter):
        self.repo, self._reporter = repo, reporter
        self.waiting: collections.deque[_SmallFile] = collections.deque()

    def pack_ready(self) -> None:
        files = []
        while self.waiting and self.waiting[0].done():
            small = self.waiting.popleft()
            if small.answer is None:
                files.append(small)
        self.pack(files)

    def pack(self, files: list[_SmallFile]) -> None:
        if not files:
            return
        answers = [small._handle.result() for small in files]
        self.repo.store_sealed([answer[1] for answer in answers if answer[0] == "stored" and answer[1] is not None])
        for small, answer in zip(files, answers):
            if answer[0] == "stored" and answer[1] is not None:
                blob_id, length, _ = answer[1]
                answer = ("stored", (blob_id.hex(), length), answer[2])
                self._reporter.advance(length)
            small.answer = answer


def _store_items(repo: Repository, source, ctx: ScanContext, method: str, reporter: ProgressReporter,
                 warn, processes: int = 0) -> dict[str, Any]:
    """Feed every item through the repository pipeline, reading a few files at once (small
    files in batches by `processes` worker processes); write tree lines in order as their
    chunks complete, so memory holds only the items in flight."""
    tree = TreeWriter()
    totals = {"files": 0, "dirs": 0, "symlinks": 0, "special": 0, "bytes_read": 0, "bytes_reused": 0,
              "files_reused": 0}
    in_flight: collections.deque[tuple[Entry, Future | None, Any]] = collections.deque()
    # hard-link groups whose first file could not be read -> the member that leads instead
    unread_leaders: dict[str, str | None] = {}

    def lead_instead(entry: Entry, reopen) -> bool:
        """A member of a group whose first file could not be read: link it to the member that
        leads instead, or read it and lead; False if it could not be read either."""
        new = unread_leaders[entry.hardlink]
        if new is not None:
            entry.hardlink = new
            return True
        pending, warning = _read_item(repo, Item(entry, reopen), method, reporter, stop)
        if warning:
            warn(warning)
        if pending is None:
            return False
        entry.chunks, entry.size = pending.result(), pending.size
        totals["files_reused"] -= 1
        totals["bytes_reused"] -= entry.size
        totals["bytes_read"] += entry.size
        unread_leaders[entry.hardlink] = entry.hardlink = entry.path
        return True
    slots = threading.BoundedSemaphore(FILES_IN_FLIGHT)
    stop = ctx.cancel.child()
    readers = ThreadPoolExecutor(SOURCE_READERS, thread_name_prefix="insite-source")
    small = workers.Batches(processes, _seal_small_files, "backup", initial=repo.sealing_keys())
    packing = _Packing(repo, reporter)

    def drain(wait: bool, at_most: int | None = None) -> None:
        """Write finished entries from the front; with wait, block for them (at_most of them)."""
        while in_flight and (at_most is None or at_most > 0):
            if at_most is not None:
                at_most -= 1
            entry, future, reopen = in_flight[0]
            if future is not None:
                if not wait and not future.done():
                    if isinstance(future, _SmallFile) and len(in_flight) >= SEND_BEHIND:
                        future.send()
                    return
                pending, warning = future.result()
                if not wait and pending is not None and not pending.done():
                    return
                in_flight.popleft()
                slots.release()
                if warning:
                    warn(warning)
                if pending is None:
                    if entry.hardlink == entry.path:
                        unread_leaders[entry.path] = None
                    continue
                entry.chunks = pending.result()
                entry.size = pending.size
                totals["bytes_read"] += pending.size
                totals["files"] += 1
                reporter.advance(files_done=1)
            else:
                in_flight.popleft()
                if entry.link_member and entry.hardlink in unread_leaders and not lead_instead(entry, reopen):
                    totals["files"] -= 1
                    totals["files_reused"] -= 1
                    totals["bytes_reused"] -= entry.size
                    continue
            tree.add(entry)

    try:
        for item in source.scan(ctx):
            ctx.cancel.check()
            entry = item.entry
            future = None
            if entry.type == "file":
                known = ctx.parent.ids if isinstance(ctx.parent, KnownAhead) else ()
                if entry.chunks is not None and all(bid in known or repo.known(bid)
                                                    for bid in (bytes.fromhex(cid) for cid, _ in entry.chunks)):
                    totals["files"] += 1
                    totals["files_reused"] += 1
                    totals["bytes_reused"] += entry.size
                    reporter.advance(entry.size, files_done=1, current="/" + entry.path)  # reused counts as done
                elif item.open is not None:
                    reporter.update(current="/" + entry.path)
                    while not slots.acquire(blocking=False):
                        drain(wait=True, at_most=1)  # the oldest file in flight frees a slot
                    if item.path is not None and small.wanted(entry.size):
                        future = _SmallFile(small.add((item.path, entry, method), entry.size), packing, item,
                                            method, reporter, stop)
                    else:
                        future = readers.submit(_read_item, repo, item, method, reporter, stop)
                else:
                    continue
            elif entry.type == "dir":
                totals["dirs"] += 1
            elif entry.type == "symlink":
                totals["symlinks"] += 1
            else:  # FIFOs and devices
                totals["special"] += 1
            in_flight.append((entry, future, item.open if entry.link_member else None))
            packing.pack_ready()
            drain(wait=False)
            while len(in_flight) >= ENTRIES_IN_FLIGHT:
                drain(wait=True, at_most=1)
        drain(wait=True)
    except BaseException:
        stop.cancel("the backup stopped")
        raise
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        small.close()
    totals["entries"] = tree.count
    totals["tree"] = tree
    return totals
