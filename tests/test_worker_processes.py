"""Small files go through worker processes (insite_console/workers.py) in backups and restores:
the round trip keeps everything the threads keep, and a worker that dies fails the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from insite_console import backup, restore, workers
from insite_console.sources import files
from insite_console.errors import InsiteError, IntegrityError
from insite_console.repo.packs import pack_key
from insite_console.repo.tree import TreeReader
from tests.conftest import WorkspaceHelper
from tests.cloud_servers import s3_server, unique_name  # noqa: F401 - the fixture
from tests.treeutil import assert_same_tree

SMALL_FILES = workers.START_AFTER + 2 * workers.BATCH_FILES + 7  # past the start, several batches


@pytest.fixture
def batches_sent(monkeypatch):
    """How many batches the parent sent to worker processes, by run kind."""
    sent = {"backup": 0, "restore": 0}
    original = workers.Batches.flush

    def counting_flush(self):
        if self._jobs:
            sent[self._what] += 1
        original(self)

    monkeypatch.setattr(workers.Batches, "flush", counting_flush)
    return sent


def _small_tree(root, count: int = SMALL_FILES) -> None:
    for i in range(count):
        folder = root / f"d{i % 7}"
        folder.mkdir(exist_ok=True)
        path = folder / f"f{i:04d}.txt"
        path.write_bytes(b"%d\n" % i * (1 + i % 300))
        os.chmod(path, (0o600, 0o640, 0o755)[i % 3])
        os.utime(path, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_123_456_789 + i))


def test_small_files_written_by_workers_keep_content_metadata_links_and_holes(workspace, tmp_path, batches_sent):
    src = workspace.source
    _small_tree(src)
    (src / "empty.txt").write_bytes(b"")
    os.setxattr(src / "d1" / "f0001.txt", "user.note", b"kept by a worker")
    os.link(src / "d2" / "f0002.txt", src / "hard-link.txt")
    with open(src / "holes.img", "wb") as handle:  # small and sparse: 192 KiB, 8 KiB of data
        handle.truncate(192 * 1024)
        handle.write(os.urandom(4096))
        handle.seek(188 * 1024)
        handle.write(os.urandom(4096))
    os.mkfifo(src / "pipe")
    if os.geteuid() == 0:
        os.chown(src / "d3" / "f0003.txt", 1234, 5678)
    result = backup.run(workspace.ws, "tree", "full")
    assert result["status"] == "succeeded" and result["warnings"] == []
    assert batches_sent["backup"] >= 2  # the small files went to the workers

    target = tmp_path / "target"
    outcome = restore.run(workspace.ws, result["id"], str(target))
    restored = workspace.restored(target)
    assert outcome["status"] == "succeeded"
    assert batches_sent["restore"] >= 2
    assert_same_tree(src, restored)  # content, modes, owners, times, xattrs, link groups, the FIFO
    assert os.stat(restored / "hard-link.txt").st_ino == os.stat(restored / "d2" / "f0002.txt").st_ino
    assert os.stat(restored / "holes.img").st_blocks * 512 <= 64 * 1024

    # the workers' chunks are the threads' chunks: an unchanged tree stores nothing new
    again = backup.run(workspace.ws, "tree", "full")
    assert again["bytes_stored"] < 64 * 1024


def test_a_fifo_swapped_in_for_a_worker_s_file_after_the_scan_is_skipped_not_waited_on(workspace, monkeypatch):
    # the worker opens each file of its batch ahead of reading it (read-ahead), then reads it:
    # neither open may block on a FIFO that took a scanned file's place
    _small_tree(workspace.source)
    number = max(i for i in range(SMALL_FILES) if i % 7 == 6)  # in the last folder: past the start
    swapped = workspace.source / f"d{number % 7}" / f"f{number:04d}.txt"
    assert swapped.exists()
    original = workers.Batches.add

    def swap_then_add(self, job, size):
        if job[0] == str(swapped):
            swapped.unlink()
            os.mkfifo(swapped)
        return original(self, job, size)

    monkeypatch.setattr(workers.Batches, "add", swap_then_add)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(backup.run(workspace.ws, "tree", "full")), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the backup waited on a FIFO"
    assert outcome["status"] == "succeeded"
    assert [w for w in outcome["warnings"] if "no longer a regular file" in w and swapped.name in w], outcome["warnings"]


def _kill_a_worker_after(monkeypatch, kind: str, batches: int) -> None:
    """SIGKILL one worker process of the first `kind` run once it has been sent `batches`."""
    original = workers.Batches.flush
    sent = [0]

    def flush_then_kill(self):
        original(self)
        if self._what == kind and self._pool is not None:
            sent[0] += 1
            if sent[0] == batches:
                os.kill(self._pool[0].process.pid, signal.SIGKILL)

    monkeypatch.setattr(workers.Batches, "flush", flush_then_kill)


def test_a_backup_whose_worker_is_killed_fails_and_the_next_one_is_whole(workspace, tmp_path, monkeypatch):
    _small_tree(workspace.source, count=SMALL_FILES + 600)
    _kill_a_worker_after(monkeypatch, "backup", 3)
    with pytest.raises(InsiteError, match="a backup worker process died"):
        backup.run(workspace.ws, "tree", "full")
    failed = workspace.ws.catalog.backups(policy="tree")[0]
    assert failed["status"] == "failed" and "worker process died" in failed["error"]

    monkeypatch.undo()
    result = backup.run(workspace.ws, "tree", "full")
    assert result["status"] == "succeeded"
    target = tmp_path / "target"
    restore.run(workspace.ws, result["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))


def test_a_restore_whose_worker_is_killed_fails_and_names_it(workspace, tmp_path, monkeypatch):
    _small_tree(workspace.source, count=SMALL_FILES + 600)
    result = backup.run(workspace.ws, "tree", "full")
    _kill_a_worker_after(monkeypatch, "restore", 3)
    target = tmp_path / "target"
    with pytest.raises(InsiteError, match="a restore worker process died"):
        restore.run(workspace.ws, result["id"], str(target))
    # what is in place is whole: every file under its own name has the backup's content
    restored = workspace.restored(target)
    for path in restored.rglob("*.txt"):
        assert path.read_bytes() == (workspace.source / path.relative_to(restored)).read_bytes()

    monkeypatch.undo()
    again = tmp_path / "again"
    restore.run(workspace.ws, result["id"], str(again))
    assert_same_tree(workspace.source, workspace.restored(again))


def test_a_restore_from_a_local_repository_has_its_workers_read_the_packs(workspace, tmp_path, monkeypatch,
                                                                         batches_sent):
    # the jobs carry where each chunk lies, not content: no pipe has to hold a batch's bytes
    _small_tree(workspace.source)
    result = backup.run(workspace.ws, "tree", "full")
    monkeypatch.setattr(workers, "_pipes_widen", lambda: False)
    sent = []
    monkeypatch.setattr(workers.Batches, "add", lambda self, job, size, add=workers.Batches.add: (
        sent.append(job[3]), add(self, job, size))[1])
    target = tmp_path / "target"
    assert restore.run(workspace.ws, result["id"], str(target))["status"] == "succeeded"
    assert batches_sent["restore"] >= 2
    assert sent and all(blob[2] is None for blob in sent if blob is not None)  # nothing read by the parent
    assert_same_tree(workspace.source, workspace.restored(target))


@pytest.mark.parametrize("widen", [True, False], ids=["workers", "pipe-cannot-be-widened"])
def test_a_restore_from_an_object_store_sends_the_chunks_and_needs_a_wide_pipe(s3_server, tmp_path, monkeypatch,
                                                                            batches_sent, widen):
    # an object store's chunks are fetched by the parent and sent as stored; through a 64 KiB
    # pipe a dead worker could hang the pool, so then the small files stay in the threads
    source = tmp_path / "src"
    source.mkdir()
    _small_tree(source)
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [catalog]
        path = "state/catalog.sqlite"
        [encryption]
        passphrase_env = "INSITE_PASSPHRASE"
        [storage.s3]
        type = "s3"
        bucket = "{unique_name()}"
        endpoint_url = "{s3_server.endpoint_url}"
        [source.tree]
        type = "files"
        paths = ["{source}"]
        [policy.tree]
        source = "tree"
        storage = "s3"
        """))
    helper = WorkspaceHelper(tmp_path, source, config)
    helper.cli("init", "--create", check=True)
    try:
        result = backup.run(helper.ws, "tree", "full")
        monkeypatch.setattr(workers, "_pipes_widen", lambda: widen)
        target = tmp_path / "target"
        outcome = restore.run(helper.ws, result["id"], str(target))
        assert outcome["status"] == "succeeded"
        assert (batches_sent["restore"] >= 2) == widen
        assert_same_tree(source, helper.restored(target))
    finally:
        helper.close()


def test_an_incrementals_few_changed_files_are_sent_before_the_scan_must_wait_for_them(workspace, tmp_path,
                                                                                    monkeypatch):
    # one changed file in 40: a batch of 32 would fill only after ~1,300 entries, so the scan
    # used to stop at ENTRIES_IN_FLIGHT, send the batch itself and wait for each round trip
    monkeypatch.setattr(files, "RACY_NS", 0)  # the tree was just written: reuse it all the same
    _small_tree(workspace.source, count=3000)
    backup.run(workspace.ws, "tree", "full")
    changed = sorted(workspace.source.rglob("*.txt"))[::40]
    for path in changed:
        path.write_bytes(path.read_bytes() + b"changed\n")
    monkeypatch.setattr(workers, "START_AFTER", 0)
    sent_by_waiting = []
    original = workers._Handle.result

    def result(self):
        sent_by_waiting.append(self.sent is None)
        return original(self)

    monkeypatch.setattr(workers._Handle, "result", result)
    result = backup.run(workspace.ws, "tree", "incremental")
    assert result["status"] == "succeeded" and result["files"] == 3000
    assert len(sent_by_waiting) == len(changed)  # each changed file went to a worker
    assert sent_by_waiting.count(True) <= 1  # at most the last batch, at the end of the scan
    target = tmp_path / "target"
    restore.run(workspace.ws, result["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_chunk_read_by_a_worker_is_named_and_never_restored(workspace, tmp_path, batches_sent, damage):
    _small_tree(workspace.source)
    result = backup.run(workspace.ws, "tree", "full")
    victim = sorted(workspace.source.rglob("*.txt"))[-1]  # past START_AFTER: written by a worker
    repo = workspace.ws.repository("local")
    tree = TreeReader(repo, repo.load_manifest(result["id"])["tree"])
    entry = next(e for e in tree if e.path == str(victim).lstrip("/"))
    location = repo.locate(bytes.fromhex(entry.chunks[0][0]))
    pack = Path(repo.storage.root) / pack_key(location.pack)
    raw = bytearray(pack.read_bytes())
    if damage == "flipped":
        raw[location.offset + location.length // 2] ^= 0x01
    else:  # the pack ends inside the chunk
        raw = raw[:location.offset + location.length // 2]
    pack.write_bytes(bytes(raw))

    target = tmp_path / "target"
    with pytest.raises(IntegrityError, match=rf"{victim.name}: chunk .* (failed authentication|is truncated)"):
        restore.run(workspace.ws, result["id"], str(target))
    assert batches_sent["restore"] >= 1
    assert not (workspace.restored(target) / victim.relative_to(workspace.source)).exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _helpers_once_workers_run(process: subprocess.Popen) -> list[int]:
    """The run's helper processes (forkserver, resource tracker) and workers, once there are workers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        helpers = _children(process.pid)  # the forkserver and the resource tracker
        workers_of = [worker for helper in helpers for worker in _children(helper)]
        if workers_of:
            return helpers + workers_of
        time.sleep(0.01)
    raise AssertionError("the run finished before its workers could be seen")


def test_ctrl_c_cancels_a_run_whose_workers_get_it_too(workspace):
    # the terminal sends SIGINT to its whole process group: the workers died of it mid-batch,
    # printing tracebacks, and the backup failed as "a backup worker process died"
    _small_tree(workspace.source, count=3000)
    process = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(workspace.config),
                                "backup", "tree"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    _helpers_once_workers_run(process)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert b"cancelled by signal SIGINT" in out + err
    assert b"Traceback" not in err and b"died" not in err
    assert workspace.ws.catalog.backups(policy="tree")[0]["status"] == "cancelled"


def test_workers_end_when_their_run_is_killed(workspace):
    # a worker's parent is the forkserver: killing the run used to leave the forkserver and
    # its workers waiting forever, holding the keys and the run's stdout
    _small_tree(workspace.source, count=3000)
    process = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(workspace.config),
                                "backup", "tree", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    helpers = _helpers_once_workers_run(process)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in helpers):
        time.sleep(0.1)
    assert not [pid for pid in helpers if _running(pid)]
    assert process.stdout.read() == b""  # the pipe ends: no process holds it any more


class _CapturedStderr:
    """What Textual puts in sys.stderr while the console runs: no descriptor behind it."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def fileno(self):
        return -1


def test_a_run_inside_the_console_process_keeps_its_small_files_in_threads(workspace, tmp_path, monkeypatch,
                                                                          batches_sent):
    # a drill's restore runs in the console's process, where starting a pool failed with
    # "bad value(s) in fds_to_keep"
    _small_tree(workspace.source)
    monkeypatch.setattr(sys, "stderr", _CapturedStderr())
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    outcome = restore.run(workspace.ws, result["id"], str(target))
    assert result["status"] == outcome["status"] == "succeeded"
    assert batches_sent == {"backup": 0, "restore": 0}
    assert_same_tree(workspace.source, workspace.restored(target))


def test_a_cancelled_restore_leaves_no_temporary_file_behind(workspace, tmp_path, monkeypatch):
    from insite_console.errors import Cancelled
    from insite_console.events import CancelToken

    for i in range(workers.START_AFTER + 300):  # past the start, one file a batch: 200 KiB each
        folder = workspace.source / f"d{i // 64}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:04d}.bin").write_bytes(os.urandom(200 * 1024 if i >= workers.START_AFTER else 1024))
    result = backup.run(workspace.ws, "tree", "full")
    cancel = CancelToken()
    original = workers.Batches.flush
    sent = [0]

    def flush_then_cancel(self):
        original(self)
        if self._what == "restore" and self._pool is not None:
            sent[0] += 1
            if sent[0] == 40:  # workers are writing: the run stops now
                cancel.cancel("the operator cancelled")

    monkeypatch.setattr(workers.Batches, "flush", flush_then_cancel)
    target = tmp_path / "target"
    with pytest.raises(Cancelled):
        restore.run(workspace.ws, result["id"], str(target), cancel=cancel)
    left = [p for p in target.rglob("*") if p.name.startswith(".insite-restore-")]
    assert left == []
    restored = workspace.restored(target)
    for path in restored.rglob("*.bin"):  # what is there is whole
        assert path.read_bytes() == (workspace.source / path.relative_to(restored)).read_bytes()


def _refuse(jobs: list) -> list:
    """A job function with a bug, run in a worker process."""
    raise ValueError(f"cannot handle {jobs[0]}")


def test_a_job_function_that_raises_fails_the_run_with_its_error():
    batches = workers.Batches(1, _refuse, "backup")
    handle = batches.add("job-1", 10)
    with pytest.raises(InsiteError, match="a worker process failed: ValueError: cannot handle job-1"):
        handle.result()
    batches.close()
