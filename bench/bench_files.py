"""File-tree benchmark: insite-console against restic and borg on the same tree, same run.

    python bench/bench_files.py [--size-mb 1024] [--runs 1] [--keep]

Generates a deterministic mixed tree (many small compressible files, incompressible
binaries, a few large files), then measures for each tool: first full backup, backup after a
1% mutation, repository size, full restore, deep verify, and peak RSS. Figures are printed as
ratios to restic measured in the same run, since these machines are noisy. Page caches are
dropped before each step when the kernel allows it (`/proc/sys/vm/drop_caches`), otherwise
runs are warm and the report says so. restic and borg come from Debian (`apt-get install
restic borgbackup`); a missing tool is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PASSPHRASE = "bench passphrase"
ROOT = Path(__file__).resolve().parent.parent
CONSOLE = [sys.executable, "-m", "insite_console"]


def make_tree(root: Path, size_mb: int, seed: int = 42) -> int:
    """~size_mb of data: 30% small text files, 40% random binaries, 30% a few large files."""
    rng = random.Random(seed)
    total, budget = 0, size_mb * 1024 * 1024
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(2000)]
    small_budget, binary_budget = budget * 0.3, budget * 0.4
    i = 0
    while total < small_budget:
        folder = root / "src" / f"pkg{i % 97:02d}" / f"mod{i % 13}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(200, 60_000)
        data = b" ".join(rng.choice(words) for _ in range(size // 6))[:size]
        (folder / f"file{i:06d}.txt").write_bytes(data)
        total += len(data)
        i += 1
    while total < small_budget + binary_budget:
        folder = root / "bin" / f"set{i % 31:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(100_000, 4_000_000)
        (folder / f"blob{i:06d}.bin").write_bytes(rng.randbytes(size))
        total += size
        i += 1
    big = root / "large"
    big.mkdir(parents=True, exist_ok=True)
    n = 0
    while total < budget:
        size = min(int(budget * 0.1), budget - total)
        with open(big / f"large{n}.dat", "wb") as handle:
            written = 0
            while written < size:
                block = (rng.randbytes(1 << 20) if n % 2 else (words[n % len(words)] * 200_000)[: 1 << 20])
                handle.write(block[: size - written])
                written += len(block[: size - written])
        total += size
        n += 1
    return total


def mutate(root: Path, fraction: float = 0.01, seed: int = 7) -> None:
    """Change ~1% of the bytes: rewrite some small files, append to a large one, add files."""
    rng = random.Random(seed)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    changed = 0
    while changed < total * fraction:
        path = rng.choice(files)
        if path.stat().st_size > 8 << 20:
            with open(path, "ab") as handle:
                handle.write(rng.randbytes(1 << 20))
            changed += 1 << 20
        else:
            data = bytearray(path.read_bytes())
            if data:
                pos = rng.randrange(len(data))
                data[pos:pos + 100] = rng.randbytes(100)
            path.write_bytes(bytes(data))
            changed += len(data)
    (root / "new-file.bin").write_bytes(rng.randbytes(256 * 1024))


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Tool:
    name = ""

    def __init__(self, work: Path, tree: Path):
        self.work, self.tree = work, tree
        self.repo = work / f"repo-{self.name}"

    def available(self) -> bool:
        return True


class Insite(Tool):
    name = "insite"

    def __init__(self, work, tree):
        super().__init__(work, tree)
        self.config = work / "insite.toml"
        self.config.write_text(textwrap.dedent(f"""
            [catalog]
            path = "{work}/insite-state/catalog.sqlite"
            [storage.local]
            type = "local"
            path = "{self.repo}"
            [source.tree]
            type = "files"
            paths = ["{tree}"]
            [policy.tree]
            source = "tree"
            storage = "local"
            """))
        self.env = {"INSITE_PASSPHRASE": PASSPHRASE}

    def cmd(self, *args):
        return [*CONSOLE, "-c", str(self.config), *args]

    def init(self):
        subprocess.run(self.cmd("init"), env={**os.environ, **self.env}, check=True, capture_output=True)

    def backup(self):
        return timed(self.cmd("backup", "tree", "--json"), self.env)

    def restore(self, target):
        out = subprocess.run(self.cmd("backups", "--json"), env={**os.environ, **self.env}, check=True,
                             capture_output=True, text=True).stdout
        return timed(self.cmd("restore", json.loads(out)[0]["id"], "--target", str(target)), self.env)

    def verify(self):
        out = subprocess.run(self.cmd("backups", "--json"), env={**os.environ, **self.env}, check=True,
                             capture_output=True, text=True).stdout
        return timed(self.cmd("verify", json.loads(out)[0]["id"], "--deep"), self.env)


class Restic(Tool):
    name = "restic"

    def available(self):
        return shutil.which("restic") is not None

    @property
    def env(self):
        return {"RESTIC_PASSWORD": PASSPHRASE, "RESTIC_REPOSITORY": str(self.repo),
                "RESTIC_CACHE_DIR": str(self.work / "restic-cache")}

    def init(self):
        subprocess.run(["restic", "init"], env={**os.environ, **self.env}, check=True, capture_output=True)

    def backup(self):
        return timed(["restic", "backup", "--quiet", str(self.tree)], self.env)

    def restore(self, target):
        return timed(["restic", "restore", "latest", "--target", str(target)], self.env)

    def verify(self):
        return timed(["restic", "check", "--read-data"], self.env)


class Borg(Tool):
    name = "borg"

    def available(self):
        return shutil.which("borg") is not None

    @property
    def env(self):
        return {"BORG_PASSPHRASE": PASSPHRASE, "BORG_REPO": str(self.repo),
                "BORG_BASE_DIR": str(self.work / "borg-base"), "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}

    def init(self):
        subprocess.run(["borg", "init", "--encryption=repokey-blake2"], env={**os.environ, **self.env}, check=True,
                       capture_output=True)
        self.count = 0

    def backup(self):
        self.count += 1
        return timed(["borg", "create", "--compression", "lz4", f"::b{self.count}", str(self.tree)], self.env)

    def restore(self, target):
        target.mkdir(parents=True, exist_ok=True)
        return timed(["borg", "extract", f"::b{self.count}"], self.env, cwd=str(target))

    def verify(self):
        return timed(["borg", "check", "--verify-data"], self.env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=1, help="repeat each measurement and take the median")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--tools", default="insite,restic,borg")
    parser.add_argument("--single-file-mb", type=int, default=0,
                        help="also back up one file of this size and report insite's peak RSS")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="insite-bench-"))
    tree = work / "tree"
    if not tree.exists():
        print(f"generating {args.size_mb} MB tree in {tree} …", file=sys.stderr)
        size = make_tree(tree, args.size_mb)
    else:
        size = dir_size(tree)
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    cold = drop_caches()
    tools = [cls(work, tree) for cls in (Insite, Restic, Borg) if cls.name in args.tools.split(",")]
    tools = [t for t in tools if t.available()]
    results: dict[str, dict[str, float]] = {}
    original = work / "tree-original"
    shutil.copytree(tree, original, symlinks=True)
    for run in range(args.runs):
        shutil.rmtree(tree)
        shutil.copytree(original, tree, symlinks=True)
        for tool in tools:
            shutil.rmtree(tool.repo, ignore_errors=True)
            for extra in ("insite-state", "restic-cache", "borg-base"):
                shutil.rmtree(work / extra, ignore_errors=True)
            tool.init()
        for tool in tools:
            drop_caches()
            seconds, rss = tool.backup()
            results.setdefault(tool.name, {}).setdefault("backup", []).append(seconds)
            results[tool.name].setdefault("backup_rss_mb", []).append(rss / 1024)
        mutate(tree)
        for tool in tools:
            drop_caches()
            seconds, _ = tool.backup()
            results[tool.name].setdefault("incremental", []).append(seconds)
            results[tool.name].setdefault("repo_mb", []).append(dir_size(tool.repo) / 2**20)
        for tool in tools:
            target = work / f"restore-{tool.name}"
            shutil.rmtree(target, ignore_errors=True)
            drop_caches()
            seconds, rss = tool.restore(target)
            results[tool.name].setdefault("restore", []).append(seconds)
            results[tool.name].setdefault("restore_rss_mb", []).append(rss / 1024)
            shutil.rmtree(target, ignore_errors=True)
        for tool in tools:
            drop_caches()
            seconds, _ = tool.verify()
            results[tool.name].setdefault("verify", []).append(seconds)
    medians = {name: {k: statistics.median(v) for k, v in metrics.items()} for name, metrics in results.items()}
    print(f"\ntree: {size / 2**20:.0f} MiB in {files} files; caches {'dropped' if cold else 'warm (cannot drop)'}; "
          f"runs: {args.runs}; cores: {os.cpu_count()}\n")
    header = f"{'metric':<16}" + "".join(f"{t.name:>14}" for t in tools) + ("   insite/restic" if "restic" in medians else "")
    print(header)
    for metric in ("backup", "incremental", "restore", "verify", "repo_mb", "backup_rss_mb", "restore_rss_mb"):
        row = f"{metric:<16}" + "".join(f"{medians[t.name][metric]:>14.1f}" for t in tools)
        if "restic" in medians and medians["restic"][metric]:
            row += f"   {medians['insite'][metric] / medians['restic'][metric]:>12.2f}x"
        print(row)
    mb = size / 2**20
    print(f"\ninsite throughput: backup {mb / medians['insite']['backup']:.0f} MiB/s, "
          f"restore {mb / medians['insite']['restore']:.0f} MiB/s; incremental/full = "
          f"{medians['insite']['incremental'] / medians['insite']['backup']:.2f}")
    print(json.dumps({"size_mib": round(mb), "files": files, "cold": cold, "medians": medians}), file=sys.stderr)
    if args.single_file_mb:
        single_file_rss(work, args.single_file_mb)
    if not args.keep and not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def single_file_rss(work: Path, size_mb: int) -> None:
    """Peak RSS of backing up and restoring one large file: memory must not grow with file size."""
    folder = work / "single"
    folder.mkdir(exist_ok=True)
    with open(folder / "one.bin", "wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1 << 20))
    tool = Insite(work / "single-work", folder) if (work / "single-work").mkdir() is None else None
    tool.init()
    seconds, rss = tool.backup()
    restore_seconds, restore_rss = tool.restore(work / "single-restore")
    print(f"single {size_mb} MiB file: backup {seconds:.1f}s peak RSS {rss / 1024:.0f} MiB; "
          f"restore {restore_seconds:.1f}s peak RSS {restore_rss / 1024:.0f} MiB")
    shutil.rmtree(folder)
    shutil.rmtree(work / "single-restore", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
