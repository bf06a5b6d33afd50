"""Shared fixtures: throwaway workspaces on local storage with a real repository."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PASSPHRASE = "correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch):
    monkeypatch.setenv("INSITE_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("INSITE_CONFIG", raising=False)


def write_config(directory: Path, paths: list[str], extra: str = "", policy_extra: str = "",
                 storage_path: str = "repo", exclude: list[str] | None = None) -> Path:
    config = directory / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [catalog]
        path = "state/catalog.sqlite"

        [encryption]
        passphrase_env = "INSITE_PASSPHRASE"

        [storage.local]
        type = "local"
        path = "{storage_path}"

        [source.tree]
        type = "files"
        paths = {paths!r}
        exclude = {exclude or []!r}

        [policy.tree]
        source = "tree"
        storage = "local"
        type = "incremental"
        rpo = "15m"
        schedule = "*/15 * * * *"
        retention = {{ keep_last = 2 }}
        {policy_extra}
        """).replace("'", '"') + extra)
    return config


class WorkspaceHelper:
    """A workspace in a temporary folder: its config, source tree and helpers to run things."""

    def __init__(self, root: Path, source: Path, config: Path):
        self.root = root
        self.source = source
        self.config = config
        self._ws = None

    @property
    def ws(self):
        from insite_console.workspace import Workspace

        if self._ws is None:
            self._ws = Workspace.load(self.config)
        return self._ws

    def reopen(self):
        self.close()
        return self.ws

    def close(self):
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def cli(self, *args: str, check: bool = False, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        result = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(self.config), *args],
                                capture_output=True, text=True, env=full_env, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"insite-console {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def restored(self, target: Path) -> Path:
        """Where the source tree lands under a restore target."""
        return target / str(self.source).lstrip("/")


@pytest.fixture
def workspace(tmp_path):
    """A workspace with an initialised local repository over an (empty) source folder."""
    source = tmp_path / "src"
    source.mkdir()
    config = write_config(tmp_path, [str(source)])
    helper = WorkspaceHelper(tmp_path, source, config)
    helper.ws.init_repository("local")
    yield helper
    helper.close()
