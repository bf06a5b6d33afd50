"""What the reliability tests check after every fault: the checks a user would make."""

from __future__ import annotations

import shutil
from pathlib import Path

from insite_console import restore, verify
from insite_console.repo.packs import pack_id_from_key
from insite_console.workspace import Workspace
from tests.conftest import WorkspaceHelper, write_config
from tests.treeutil import assert_same_tree

KILL_ENV = "INSITE_TEST_KILL_AFTER_WRITES"  # read by storage/local.py
MIB = 1024 * 1024
SMALL_PACKS = '\n[engine]\npack_size = "1MiB"\nthreads = 2\n'


def make_workspace(root: Path, extra: str = "", storage_path: str = "repo", init: bool = True) -> WorkspaceHelper:
    """A workspace with small packs (so a few MiB make many storage writes)."""
    source = root / "src"
    source.mkdir(parents=True, exist_ok=True)
    helper = WorkspaceHelper(root, source, write_config(root, [str(source)], extra=SMALL_PACKS + extra,
                                                       storage_path=storage_path))
    if init:
        helper.ws.init_repository("local")
        helper.close()
    return helper


def write_random(path: Path, size: int, seed: int) -> None:
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


class Snapshot:
    """A copy of a workspace's repositories and state, put back before each kill point so every
    point starts from the same state."""

    def __init__(self, root: Path, names=("repo", "state")):
        self.root, self.names = root, [n for n in names if (root / n).exists()]
        self.saved = root.parent / (root.name + "-snapshot")
        shutil.rmtree(self.saved, ignore_errors=True)
        for name in self.names:
            shutil.copytree(root / name, self.saved / name, symlinks=True)

    def put_back(self) -> None:
        for name in self.names:
            shutil.rmtree(self.root / name)
            shutil.copytree(self.saved / name, self.root / name, symlinks=True)


def whole_problems(repo, backup_id: str) -> list[str]:
    """A deep check of a manifest the catalog does not list: every pack it needs is read and
    authenticated (verify.run's checks, for a backup id no catalog row names)."""
    problems: list[str] = []
    manifest = repo.load_manifest(backup_id)
    needed = verify._needed_packs(repo, manifest, problems)
    sizes = repo.index.packs()
    for pack_id in needed:
        _size, problem = repo.check_pack(pack_id, sizes.get(pack_id, -1))
        if problem:
            problems.append(problem)
    return problems


def assert_consistent(config: Path, storages=("local",)) -> dict:
    """After a crash, in a new process's view: no run is still `running`; every index object
    names only packs on storage; every backup the catalog lists as succeeded deep-verifies on
    each storage it is listed on; every manifest on storage (listed or not) is whole. Returns
    {storage: manifest ids}."""
    ws = Workspace.load(config)
    try:
        rows = ws.catalog.backups()
        assert not [r["id"] for r in rows if r["status"] == "running"], rows
        manifests = {}
        for storage in storages:
            repo = ws.repository(storage)
            repo.reload_index()
            on_storage = {pack_id_from_key(info.key) for info in repo.storage.list("data/")}
            missing = sorted(set(repo.index.packs()) - on_storage)
            assert not missing, f"{storage}: index objects name packs that are not on storage: {missing}"
            ids = set(repo.list_manifest_ids())
            listed = {r["id"] for r in rows
                      if r["status"] == "succeeded" and storage in ws.catalog.backup_storages(r["id"])}
            for backup_id in sorted(listed):
                result = verify.run(ws, backup_id, deep=True, storage=storage)
                assert result["status"] == "ok", (storage, backup_id, result["problems"])
            for backup_id in sorted(ids - listed):
                assert whole_problems(repo, backup_id) == [], (storage, backup_id)
            manifests[storage] = ids
        return manifests
    finally:
        ws.close()


def assert_restores(ws, backup_id: str, source: Path, target: Path, expected: Path | None = None,
                    storage: str | None = None) -> None:
    """Restore into a fresh target; the tree backed up from `source` must come back identical,
    bytes and metadata, to `expected` (default: the source as it is now)."""
    shutil.rmtree(target, ignore_errors=True)
    result = restore.run(ws, backup_id, str(target), storage=storage)
    assert result["status"] == "succeeded", result
    assert_same_tree(expected or source, target / str(source).lstrip("/"))


def killed(result) -> bool:
    """Whether a CLI run ended by our SIGKILL (and not by an error of its own)."""
    if result.returncode == 0:
        return False
    assert result.returncode == -9, f"exit {result.returncode}, not killed:\n{result.stderr}"
    return True

