"""A workspace: one config file, its catalog, and the repositories on its storages.

The CLI, the scheduler and the TUI all work through a Workspace, so opening storages,
unlocking repositories and reaping runs a killed process left behind happen in one place.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from insite_console import config as config_module
from insite_console.catalog.db import Catalog
from insite_console.config import Config, parse_size
from insite_console.errors import ConfigError, InsiteError, ObjectNotFound, RepositoryError
from insite_console.redact import redact
from insite_console.repo.repository import CONFIG_KEY, Repository
from insite_console.storage import Storage, open_storage


class Workspace:
    def __init__(self, config: Config):
        self.config = config
        self._catalog: Catalog | None = None
        self._storages: dict[str, Storage] = {}
        self._repos: dict[str, Repository] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Workspace":
        return cls(config_module.load(config_module.find_config_path(str(path) if path else None)))

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.config.catalog_path)
            self._catalog.reap_dead_runs()
        return self._catalog

    @property
    def cache_dir(self) -> Path:
        return self.config.state_dir / "cache"

    def storage(self, name: str) -> Storage:
        with self._lock:
            if name not in self._storages:
                if name not in self.config.storages:
                    known = ", ".join(sorted(self.config.storages)) or "none"
                    raise ConfigError(f"{self.config.path}: no storage named {name!r} (storages: {known})")
                self._storages[name] = open_storage(name, self.config.storages[name])
            return self._storages[name]

    def passphrase(self) -> str:
        settings = self.config.encryption
        if "passphrase_file" in settings:
            path = Path(settings["passphrase_file"])
            try:
                text = path.read_text().rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"{self.config.path}: encryption.passphrase_file: cannot read {path}: "
                                  f"{exc.strerror}") from None
            if not text:
                raise ConfigError(f"{self.config.path}: encryption.passphrase_file: {path} is empty")
            return text
        variable = settings.get("passphrase_env", "INSITE_PASSPHRASE")
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"{self.config.path}: encryption.passphrase_env: environment variable {variable} "
                              "is not set (it must hold the repository passphrase)")
        return value

    def _repo_options(self) -> dict:
        engine = self.config.engine
        options = {}
        if "threads" in engine:
            options["threads"] = engine["threads"]
        if "memory_limit" in engine:
            options["memory_limit"] = parse_size(engine["memory_limit"])
        if "pack_size" in engine:
            options["pack_size"] = parse_size(engine["pack_size"])
        return options

    def repository(self, name: str, sync_index: bool = True) -> Repository:
        """The unlocked repository on storage `name` (opened once per workspace). `sync_index=False`
        skips loading the index (for sealed objects only: WAL); a later caller gets it synced."""
        with self._lock:
            repo = self._repos.get(name)
        if repo is not None:
            if sync_index and not repo.index_synced:
                repo.sync_index()
            return repo
        storage = self.storage(name)
        try:
            repo = Repository.open(storage, self.passphrase(), self.cache_dir, sync_index=sync_index,
                                   **self._repo_options())
        except RepositoryError:
            vanished = self.vanished_message(name)
            if vanished:
                raise RepositoryError(vanished) from None
            raise
        with self._lock:
            self._repos.setdefault(name, repo)
            return self._repos[name]

    def expected_backups(self, name: str) -> int:
        """How many restore points the catalog knows on storage `name` (written or copied there)."""
        row = self.catalog.db.execute(
            "SELECT COUNT(*) FROM backups WHERE status = 'succeeded' AND (storage = ? OR id IN "
            "(SELECT backup_id FROM backup_storages WHERE storage = ?))", (name, name)).fetchone()
        return int(row[0])

    def vanished_message(self, name: str) -> str | None:
        """When the catalog knows backups on a storage whose repository is gone: what is known,
        and never the advice to `init` (that would put an empty repository in its place)."""
        storage = self.storage(name)
        try:
            if storage.exists(CONFIG_KEY):
                return None
        except InsiteError:
            return None  # unreadable, not known to be missing: the original error says more
        expected = self.expected_backups(name)
        if not expected:
            return None
        return (f"storage {name} ({storage.describe()}): the repository is missing, but the catalog expects "
                f"{expected} backup(s) there. Do NOT run `insite-console init` (it would create an empty "
                "repository in its place): check the mount, path, bucket and credentials, or restore the "
                "storage from a copy")

    def probe_storage(self, name: str) -> dict:
        """A cheap check (one stat of the repository config) that a storage still holds its
        repository: state ok / missing / unreadable, with what the catalog expects there."""
        facts = {"name": name, "expected_backups": self.expected_backups(name)}
        try:
            storage = self.storage(name)
            storage.stat(CONFIG_KEY)
        except ObjectNotFound:
            message = self.vanished_message(name) or f"storage {name}: no repository (run `insite-console init {name}`)"
            return dict(facts, state="missing", detail=message)
        except (InsiteError, OSError) as exc:
            return dict(facts, state="unreadable", detail=f"storage {name}: cannot be read: {exc}")
        return dict(facts, state="ok", detail="")

    def init_repository(self, name: str) -> Repository:
        storage = self.storage(name)
        ensure = getattr(storage, "ensure_container", None)
        if ensure is not None:
            ensure(create=getattr(self, "create_containers", False))
        repo = Repository.init(storage, self.passphrase(), self.cache_dir, **self._repo_options())
        with self._lock:
            self._repos[name] = repo
        return repo

    def storage_for_backup(self, backup: dict) -> str:
        """The storage to read a backup from: where it was written if its manifest is readable
        there, else the first copy that is (the off-site copy after losing the primary)."""
        storages = [backup["storage"]] + [s for s in self.catalog.backup_storages(backup["id"]) if s != backup["storage"]]
        reasons = []
        for name in storages:
            if name not in self.config.storages:
                reasons.append(f"{name}: not in {self.config.path}")
                continue
            try:
                self.repository(name).load_manifest(backup["id"])
                return name
            except InsiteError as exc:
                reasons.append(f"{name}: {exc}")
        raise RepositoryError(f"backup {backup['id']} cannot be read from any storage holding it: " + "; ".join(reasons))

    def seal_everywhere(self, name: str, data: bytes) -> dict:
        """A record (a drill, a recovery) sealed into every storage's repository, so a rebuilt
        catalog keeps it; says where it went and what failed."""
        stored, problems = [], []
        for storage in sorted(self.config.storages):
            try:
                self.repository(storage).put_sealed(name, data)
                stored.append(storage)
            except InsiteError as exc:
                problems.append(f"{storage}: {redact(str(exc))}")
        return {"catalog": True, "repositories": stored, "problems": problems}

    def close(self) -> None:
        for repo in self._repos.values():
            repo.close()
        for storage in self._storages.values():
            storage.close()
        self._repos.clear()
        self._storages.clear()
        if self._catalog is not None:
            self._catalog.close()
