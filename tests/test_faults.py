"""Bad input and faults: each behaves as an operator would expect, with a clear message."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from insite_console import backup, restore, verify
from insite_console.errors import ConfigError, IntegrityError, RepositoryError, StorageError, WrongPassphrase
from insite_console.repo.packs import pack_key
from insite_console.storage.local import LocalStorage
from tests.conftest import WorkspaceHelper, write_config
from tests.treeutil import assert_same_tree, build_tree


def _packs(workspace) -> list[Path]:
    return sorted((workspace.root / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)


def _as_unprivileged(base: Path, skip_paths=()) -> dict:
    """subprocess kwargs to run as `nobody` when root (root ignores permissions)."""
    if os.geteuid() != 0:
        return {}
    os.chmod(base, 0o755)
    shutil.chown(base, "nobody")
    for path in base.rglob("*"):
        if path not in skip_paths and not path.is_symlink():
            shutil.chown(path, "nobody")
    return {"user": "nobody", "cwd": str(base)}


def test_wrong_passphrase_is_a_clear_error(workspace, monkeypatch):
    monkeypatch.setenv("INSITE_PASSPHRASE", "not the passphrase")
    with pytest.raises(WrongPassphrase, match="wrong passphrase: none of the 1 key"):
        workspace.reopen().repository("local")
    result = workspace.cli("backup", "tree")
    assert result.returncode == 1
    assert "wrong passphrase" in result.stderr and "Traceback" not in result.stderr


def test_missing_passphrase_variable_names_it(workspace, monkeypatch):
    monkeypatch.delenv("INSITE_PASSPHRASE")
    result = workspace.cli("backup", "tree")
    assert result.returncode == 2
    assert "INSITE_PASSPHRASE is not set" in result.stderr and "config.toml" in result.stderr


def test_passphrases_can_be_added_rotated_and_removed(workspace, monkeypatch):
    (workspace.source / "f").write_text("data")
    backup.run(workspace.ws, "tree", "full")
    added = workspace.cli("key", "add", "--label", "escrow", env={"INSITE_NEW_PASSPHRASE": "recovery key 42"}, check=True)
    new_id = added.stdout.split()[2]
    listed = json.loads(workspace.cli("key", "list", "--json", check=True).stdout)
    assert len(listed) == 2 and {k["label"] for k in listed} == {"initial", "escrow"}
    # the new passphrase opens the same data; the old key can then be removed
    old_id = next(k["id"] for k in listed if k["current"])
    env = {"INSITE_PASSPHRASE": "recovery key 42"}
    assert workspace.cli("key", "remove", new_id, env=env).returncode == 1  # not the key in use
    workspace.cli("key", "remove", old_id, env=env, check=True)
    assert workspace.cli("backups", env=env, check=True)
    assert workspace.cli("verify", "--all", "--deep", env=env).returncode == 0
    assert "wrong passphrase" in workspace.cli("verify", "--all").stderr


def test_unreadable_source_file_is_reported_not_fatal(tmp_path):
    """Run as an unprivileged user so permissions apply (the tests run as root in CI)."""
    base = Path(tempfile.mkdtemp(prefix="insite-perm-"))
    try:
        os.chmod(base, 0o755)
        source = base / "src"
        source.mkdir()
        (source / "readable.txt").write_text("fine")
        secret = source / "secret.txt"
        secret.write_text("no access")
        config = write_config(base, [str(source)])
        helper = WorkspaceHelper(base, source, config)
        helper.ws.init_repository("local")
        helper.close()
        os.chmod(secret, 0o000)
        kwargs = _as_unprivileged(base, skip_paths=(secret,))
        result = helper.cli("backup", "tree", "--json", **kwargs)
        if result.returncode != 0 and "Permission denied" in result.stderr and "python" in result.stderr.lower():
            pytest.skip("the test virtualenv is not readable by an unprivileged user here")
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        assert output["status"] == "succeeded"
        assert any("secret.txt: cannot read: Permission denied" in w for w in output["warnings"])
        assert "secret.txt" in result.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_source_path_that_does_not_exist_is_a_config_error(tmp_path):
    config = write_config(tmp_path, [str(tmp_path / "missing")])
    subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), "init"], check=True)
    result = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), "backup", "tree"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"source.tree.paths[0]: path {tmp_path / 'missing'} does not exist" in result.stderr
    assert str(config) in result.stderr


def test_storage_folder_not_writable():
    base = Path(tempfile.mkdtemp(prefix="insite-ro-"))
    try:
        source = base / "src"
        source.mkdir()
        (source / "f").write_text("x")
        helper = WorkspaceHelper(base, source, write_config(base, [str(source)]))
        helper.ws.init_repository("local")
        helper.close()
        kwargs = _as_unprivileged(base)
        for path in [base / "repo", *(base / "repo").rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o555)
        result = helper.cli("backup", "tree", **kwargs)
        assert result.returncode == 1, result.stderr
        assert "storage local" in result.stderr and "not writable (Permission denied)" in result.stderr
        assert "Traceback" not in result.stderr
        listed = json.loads(helper.cli("backups", "--json", **kwargs).stdout)
        assert listed[0]["status"] == "failed"
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_storage_path_that_is_a_file(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    storage_file = tmp_path / "not-a-dir"
    storage_file.write_text("a file where the storage folder should be")
    helper = WorkspaceHelper(tmp_path, source, write_config(tmp_path, [str(source)], storage_path=str(storage_file)))
    with pytest.raises(StorageError, match=r"storage local .*not-a-dir.*Not a directory"):
        helper.ws.init_repository("local")
    result = helper.cli("init")
    assert result.returncode == 1 and "storage local" in result.stderr and "Traceback" not in result.stderr
    helper.close()


class _FullDisk(LocalStorage):
    """A local storage whose disk fills up after `budget` bytes, as a small tmpfs would."""

    budget = 0

    def _write(self, key, writer, durable=True):
        if key.startswith("data/"):
            size = [0]
            writer(type("Counter", (), {"write": lambda _self, data: size.__setitem__(0, len(data))})())
            if _FullDisk.budget < size[0]:
                raise self._fail("write", key, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            _FullDisk.budget -= size[0]
        super()._write(key, writer, durable)


def test_disk_full_during_backup_fails_cleanly_then_rerun_succeeds(workspace, monkeypatch, tmp_path):
    build_tree(workspace.source, files=20)
    (workspace.source / "more.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    import insite_console.workspace as workspace_module

    monkeypatch.setattr(workspace_module, "open_storage", lambda name, settings: _FullDisk(name, settings["path"]))
    _FullDisk.budget = 9 * 1024 * 1024  # room for about one pack
    ws = workspace.reopen()
    with pytest.raises(StorageError, match="no space left on device"):
        backup.run(ws, "tree", "full")
    failed = ws.catalog.backups()[0]
    assert failed["status"] == "failed" and "no space left" in failed["error"]
    assert ws.repository("local").list_manifest_ids() == []

    _FullDisk.budget = 10**12  # space freed
    ws = workspace.reopen()
    result = backup.run(ws, "tree", "full")
    target = tmp_path / "t"
    restore.run(ws, result["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))


def test_corrupted_pack_is_named_by_restore_and_deep_verify(workspace, tmp_path):
    (workspace.source / "payload.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    result = backup.run(workspace.ws, "tree", "full")
    assert verify.run(workspace.ws, result["id"], deep=True)["status"] == "ok"
    data_pack = _packs(workspace)[-1]  # the biggest pack holds the payload
    raw = bytearray(data_pack.read_bytes())
    raw[1000] ^= 0x01
    data_pack.write_bytes(bytes(raw))

    quick = verify.run(workspace.ws, result["id"])
    assert quick["status"] == "ok"  # same size: only a deep verify reads the bytes
    deep = verify.run(workspace.ws, result["id"], deep=True)
    assert deep["status"] == "failed"
    assert any(data_pack.name in p for p in deep["problems"])
    assert any("payload.bin" in p for p in deep["problems"])

    with pytest.raises(IntegrityError, match=r"payload\.bin: chunk .* failed authentication"):
        restore.run(workspace.ws, result["id"], str(tmp_path / "t"))
    assert not list((tmp_path / "t").rglob("payload.bin"))
    cli = workspace.cli("verify", result["id"], "--deep")
    assert cli.returncode == 1 and "FAILED" in cli.stdout


def test_truncated_pack_is_detected(workspace, tmp_path):
    (workspace.source / "payload.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    result = backup.run(workspace.ws, "tree", "full")
    data_pack = _packs(workspace)[-1]
    with open(data_pack, "r+b") as handle:
        handle.truncate(data_pack.stat().st_size // 2)
    quick = verify.run(workspace.ws, result["id"])
    assert quick["status"] == "failed" and any("truncated" in p for p in quick["problems"])
    with pytest.raises(IntegrityError, match=r"payload\.bin"):
        restore.run(workspace.ws, result["id"], str(tmp_path / "t"))


def test_manifest_from_a_future_format_version_is_refused(workspace, tmp_path):
    (workspace.source / "f").write_text("x")
    result = backup.run(workspace.ws, "tree", "full")
    repo = workspace.ws.repository("local")
    manifest = repo.load_manifest(result["id"])
    manifest["version"] = 99
    repo.save_manifest(manifest)
    with pytest.raises(RepositoryError, match="manifest format version 99, newer than this insite-console reads"):
        restore.run(workspace.ws, result["id"], str(tmp_path / "t"))


def test_repository_from_a_future_format_version_is_refused(workspace):
    config_path = workspace.root / "repo" / "config"
    config = json.loads(config_path.read_text())
    config["version"] = 7
    config_path.write_text(json.dumps(config))
    with pytest.raises(RepositoryError, match="format version 7, newer than this insite-console supports"):
        workspace.reopen().repository("local")


def test_kill_9_mid_backup_then_rerun_reuses_data_and_restores(workspace, tmp_path):
    rng_file = workspace.source / "large.bin"
    with open(rng_file, "wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(8 * 1024 * 1024))
    build_tree(workspace.source / "tree", files=50)
    workspace.close()
    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(workspace.config), "backup", "tree"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data_dir = workspace.root / "repo" / "data"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if data_dir.exists() and len([p for p in data_dir.rglob("*") if p.is_file() and "tmp" not in p.name]) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    ws = workspace.ws  # a new process opens the catalog: the dead run is marked failed
    rows = ws.catalog.backups()
    assert rows[0]["status"] == "failed" and "interrupted" in rows[0]["error"]
    assert ws.repository("local").list_manifest_ids() == []
    listed = json.loads(workspace.cli("backups", "--json", check=True).stdout)
    assert all(row["status"] != "succeeded" for row in listed)

    result = backup.run(ws, "tree")
    assert result["status"] == "succeeded"
    assert result["bytes_stored"] < result["bytes_read"] - 16 * 1024 * 1024  # the dead run's packs were reused
    target = tmp_path / "t"
    restore.run(ws, result["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))


def test_a_restore_removes_what_a_killed_restore_left_and_keeps_a_running_ones(workspace, tmp_path):
    """Found by a tmux walk: kill -9 during a restore left a half-written '.insite-restore-…'
    file in the target, and restoring again reported success with it still there."""
    folder = workspace.source / "big"
    folder.mkdir()
    with open(folder / "large.bin", "wb") as handle:
        for _ in range(16):
            handle.write(os.urandom(8 * 1024 * 1024))
    made = backup.run(workspace.ws, "tree", "full")
    workspace.close()
    target = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(workspace.config), "restore",
                             made["id"], "--target", str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, left = time.monotonic() + 60, []
    while time.monotonic() < deadline and not left:
        left = [p for p in target.rglob(".insite-restore-*") if p.stat().st_size > 0]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert left, "the restore was not caught writing"
    restored = workspace.restored(target) / "big"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # another restore writing into the same folder right now: its file is not touched
        running = restored / f".insite-restore-{sleeper.pid}-0123456789ab"
        running.write_bytes(b"being written")
        plan = json.loads(workspace.cli("restore", made["id"], "--target", str(target), "--dry-run", "--json",
                                        check=True).stdout)
        assert any("to remove: a temporary file left by a restore that was killed" in w for w in plan["warnings"])
        done = json.loads(workspace.cli("restore", made["id"], "--target", str(target), "--yes", "--json",
                                        check=True).stdout)
        assert any(w.startswith("/" + str(left[0].relative_to(target))) and "removed" in w
                   for w in done["warnings"]), done["warnings"]
        assert sorted(p.name for p in restored.iterdir()) == sorted(["large.bin", running.name])
        assert (restored / "large.bin").read_bytes() == (folder / "large.bin").read_bytes()
    finally:
        sleeper.kill()
