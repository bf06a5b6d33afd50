"""`insite-console demo`: a self-contained workspace with a sample tree and a few backups,
so every screen of the console has something to show."""

from __future__ import annotations

import os
import secrets
from importlib import resources
from pathlib import Path
from typing import Callable

from insite_console.errors import UsageError


def _write_sample_tree(root: Path, seed: int = 7) -> None:
    import random

    rng = random.Random(seed)
    app = root / "sample" / "app"
    config = root / "sample" / "config"
    for folder in ("src/insitechart", "src/insitechart/reports", "static/css", "data/empty", "logs"):
        (app / folder).mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (app / "src/insitechart" / f"module_{i:02d}.py").write_text(
            f'"""Module {i}."""\n\n' + "".join(f"def f{j}(x):\n    return x * {j}\n\n" for j in range(30)))
    for i in range(12):
        (app / "src/insitechart/reports" / f"report_{i:02d}.csv").write_text(
            "date,symbol,close\n" + "".join(f"2026-11-{d:02d},SYM{i},{rng.uniform(10, 500):.2f}\n" for d in range(1, 28)))
    (app / "static/css/site.css").write_text("body { font-family: sans-serif; }\n" * 50)
    (app / "static/logo.bin").write_bytes(rng.randbytes(300_000))
    (app / "logs/app.log").write_text("".join(f"2026-11-27T02:{m:02d}:00Z INFO tick {m}\n" for m in range(60)))
    (app / "logs/scratch.tmp").write_text("excluded by the policy\n")
    (app / "name with spaces.txt").write_text("operators do this\n")
    (config / "app.toml").write_text('[server]\nport = 8080\nworkers = 4\n')
    (config / "secrets.env").write_text("API_TOKEN=demo-not-a-secret\n")
    os.chmod(config / "secrets.env", 0o600)
    link = app / "current-config"
    if not link.is_symlink():
        link.symlink_to("../config/app.toml")


def make_demo(directory: str | os.PathLike, log: Callable[[str], None] = print, backups: int = 3) -> Path:
    """Create (or reuse) the demo workspace in `directory`; returns its config path."""
    from insite_console import backup
    from insite_console.workspace import Workspace

    root = Path(directory).resolve()
    config_path = root / "config.toml"
    if config_path.exists():
        log(f"demo workspace already exists: {config_path}")
        return config_path
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root} exists and is not empty; choose another --dir")
    root.mkdir(parents=True, exist_ok=True)
    template = resources.files("insite_console.demo").joinpath("config.toml").read_text()
    config_path.write_text(template)
    state = root / "state"
    state.mkdir(exist_ok=True)
    passphrase = state / "passphrase"
    passphrase.write_text(secrets.token_urlsafe(24) + "\n")
    os.chmod(passphrase, 0o600)
    _write_sample_tree(root)
    ws = Workspace.load(config_path)
    try:
        ws.init_repository("local")
        log(f"initialised the repository in {root / 'backups'}")
        first = backup.run(ws, "app_files", "full")
        log(f"full backup {first['id']}: {first['files']} files")
        for i in range(1, backups):
            (root / "sample/app/logs/app.log").open("a").write(f"2026-11-27T03:{i:02d}:00Z INFO more {i}\n")
            result = backup.run(ws, "app_files", "incremental")
            log(f"incremental backup {result['id']}: {result['files']} files")
    finally:
        ws.close()
    return config_path
