"""File-tree benchmark: insite-console against restic and borg on the same tree, same run.

    python bench/bench_files.py [--scale 1.0] [--runs 1] [--modes warm,cold] [--dir D --keep]

Generates the deterministic mixed tree of issue 12 (24k small compressible files, incompressible
binaries, duplicates, a VM-like image, a log, a random file; `--scale` shrinks it), then measures
for each tool, one after the other within each step: first full backup, backup with no change,
backup after a 1% mutation, repository size, full restore, deep verify, and peak RSS. Figures
are printed as markdown tables with insite's ratio to restic measured in the same run, since
these machines are noisy. "warm" runs sync first; "cold" runs drop the page cache before each
step (`/proc/sys/vm/drop_caches`, root only; otherwise the report says cold is unavailable). restic and borg come from Debian (`apt-get install
restic borgbackup`); a missing tool is skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

PASSPHRASE = "bench passphrase"
ROOT = Path(__file__).resolve().parent.parent
CONSOLE = [sys.executable, "-m", "insite_console"]


def make_tree(root: Path, scale: float = 1.0, seed: int = 42) -> int:
    """The issue's mixed tree (~1.1 GB at scale 1): 24,000 small text/CSV/JSON/log files of
    1–40 KB, 220 incompressible binaries of 64 KiB–6 MiB, 40 duplicated binaries, a 256 MiB
    VM-like image (mostly zeros, some data), a 128 MiB log and a 96 MiB random file. `scale`
    shrinks counts and large sizes together, for quick runs."""
    rng = random.Random(seed)
    total = 0
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(2000)]
    corpus = b" ".join(rng.choice(words) for _ in range(200_000))  # ~1.2 MB of text to cut files from
    kinds = ("txt", "csv", "json", "log")
    for i in range(int(24_000 * scale)):
        folder = root / "src" / f"pkg{i % 97:02d}" / f"mod{i % 13}"
        folder.mkdir(parents=True, exist_ok=True)
        size = int(rng.triangular(1024, 40 * 1024, 4096))
        start = rng.randrange(len(corpus) - size)
        data = b"%d," % i + corpus[start:start + size]  # unique per file, compressible
        (folder / f"file{i:06d}.{kinds[i % 4]}").write_bytes(data)
        total += len(data)
    binaries = []
    for i in range(int(220 * scale)):
        folder = root / "bin" / f"set{i % 31:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = int(math.exp(rng.uniform(math.log(64 * 1024), math.log(6 * 1024 * 1024))))
        path = folder / f"blob{i:05d}.bin"
        path.write_bytes(rng.randbytes(size))
        binaries.append(path)
        total += size
    dup = root / "dup"
    dup.mkdir(parents=True, exist_ok=True)
    for i in range(int(40 * scale)):
        source = binaries[i % len(binaries)]
        shutil.copyfile(source, dup / f"copy{i:03d}-{source.name}")
        total += source.stat().st_size
    big = root / "large"
    big.mkdir(parents=True, exist_ok=True)
    mib = 1 << 20
    with open(big / "vm.img", "wb") as handle:  # zeros with scattered data blocks, written dense
        for n in range(int(256 * scale)):
            handle.write(rng.randbytes(mib) if n % 8 == 0 else (corpus[:mib] if n % 8 == 1 else bytes(mib)))
    with open(big / "app.log", "wb") as handle:
        for n in range(int(128 * scale)):
            lines = [b"2026-01-01T00:%02d:%02d INFO request %d took %d ms %s\n" % (
                n % 60, k % 60, n * 10_000 + k, rng.randint(1, 900), corpus[k * 7:k * 7 + 40]) for k in range(10_000)]
            handle.write(b"".join(lines)[:mib].ljust(mib, b"\n"))
    with open(big / "random.bin", "wb") as handle:
        for _ in range(int(96 * scale)):
            handle.write(rng.randbytes(mib))
    total += int(256 * scale) * mib + int(128 * scale) * mib + int(96 * scale) * mib
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


def environ(extra: dict | None) -> dict:
    """os.environ with `extra` applied; a None value removes the variable."""
    env = {**os.environ, **(extra or {})}
    return {k: v for k, v in env.items() if v is not None}


#: CPU seconds (user + system) and peak summed PSS (KiB) of the last command timed, over its
#: whole process tree, for the CPU and PSS rows
last_cpu = [0.0]
last_pss = [0]
SAMPLE_SECONDS = 0.02


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (worker processes, a forkserver and its children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def _sample(pid: int) -> tuple[int, int, dict[int, float]]:
    """Summed RSS and PSS (KiB) of the tree now, and each process's CPU seconds so far."""
    rss = pss = 0
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for each in _descendants(pid):
        try:
            with open(f"/proc/{each}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            with open(f"/proc/{each}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            cpu[each] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return rss, pss, cpu


def timed(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, summed over its process tree (sampled
    every 20 ms, and never below the main process's own peak); its CPU seconds (every process
    of the tree) go to last_cpu and its peak summed PSS to last_pss. PSS shares the pages
    worker processes have in common among them, so it is the tree's real memory; RSS counts
    them once per process."""

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=environ(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"rss": 0, "pss": 0}
    cpu: dict[int, float] = {}
    finished = threading.Event()

    def sample() -> None:
        while not finished.wait(SAMPLE_SECONDS):
            rss, pss, seen = _sample(proc.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            cpu.update(seen)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    finished.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr.read().decode()[-2000:]}")
    own = usage.ru_utime + usage.ru_stime
    others = sum(value for pid, value in cpu.items() if pid != proc.pid)  # last sample of each descendant
    last_cpu[0] = own + others
    last_pss[0] = max(peak["pss"], 0)
    return seconds, max(usage.ru_maxrss, peak["rss"])


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
        # as installed: byte-compiled once, not at every command (some shells export PYTHONDONTWRITEBYTECODE)
        self.env = {"INSITE_PASSPHRASE": PASSPHRASE, "PYTHONDONTWRITEBYTECODE": None}

    def cmd(self, *args):
        return [*CONSOLE, "-c", str(self.config), *args]

    def init(self):
        subprocess.run(self.cmd("init"), env=environ(self.env), check=True, capture_output=True)

    def backup(self):
        return timed(self.cmd("backup", "tree", "--json"), self.env)

    def restore(self, target):
        out = subprocess.run(self.cmd("backups", "--json"), env=environ(self.env), check=True,
                             capture_output=True, text=True).stdout
        return timed(self.cmd("restore", json.loads(out)[0]["id"], "--target", str(target)), self.env)

    def verify(self):
        out = subprocess.run(self.cmd("backups", "--json"), env=environ(self.env), check=True,
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
        subprocess.run(["restic", "init"], env=environ(self.env), check=True, capture_output=True)

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
        subprocess.run(["borg", "init", "--encryption=repokey-blake2"], env=environ(self.env), check=True,
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


METRICS = (("backup", "first full backup", "s"), ("nochange", "backup, no change", "s"),
           ("incremental", "backup after a 1% change", "s"), ("restore", "full restore", "s"),
           ("verify", "deep verify", "s"), ("backup_cpu", "CPU time, first full backup", "s"),
           ("restore_cpu", "CPU time, full restore", "s"), ("repo_mb", "repository size", "MiB"),
           ("backup_rss_mb", "peak RSS, backup (process tree)", "MiB"),
           ("backup_pss_mb", "peak PSS, backup (process tree)", "MiB"),
           ("restore_rss_mb", "peak RSS, restore (process tree)", "MiB"),
           ("restore_pss_mb", "peak PSS, restore (process tree)", "MiB"),
           ("verify_rss_mb", "peak RSS, verify", "MiB"))


def measure(tools: list[Tool], tree: Path, original: Path, work: Path, cold: bool,
            results: dict[str, dict[str, list[float]]]) -> None:
    """One pass of every step for every tool, side by side; `cold` drops the page cache first."""

    def prepare() -> None:
        if cold:
            drop_caches()
        else:
            os.sync()

    def record(tool: Tool, metric: str, value: float) -> None:
        results.setdefault(tool.name, {}).setdefault(metric, []).append(value)

    shutil.rmtree(tree)
    shutil.copytree(original, tree, symlinks=True)
    time.sleep(2.1)  # past insite's racy window (sources/files.py RACY_NS): no file is re-read for its fresh ctime
    for tool in tools:
        shutil.rmtree(tool.repo, ignore_errors=True)
        for extra in ("insite-state", "restic-cache", "borg-base"):
            shutil.rmtree(work / extra, ignore_errors=True)
        tool.init()
    for tool in tools:
        prepare()
        seconds, rss = tool.backup()
        record(tool, "backup", seconds)
        record(tool, "backup_cpu", last_cpu[0])
        record(tool, "backup_rss_mb", rss / 1024)
        record(tool, "backup_pss_mb", last_pss[0] / 1024)
    for tool in tools:
        prepare()
        record(tool, "nochange", tool.backup()[0])
    mutate(tree)
    for tool in tools:
        prepare()
        record(tool, "incremental", tool.backup()[0])
        record(tool, "repo_mb", dir_size(tool.repo) / 2**20)
    for tool in tools:
        target = work / f"restore-{tool.name}"
        shutil.rmtree(target, ignore_errors=True)
        prepare()
        seconds, rss = tool.restore(target)
        record(tool, "restore", seconds)
        record(tool, "restore_cpu", last_cpu[0])
        record(tool, "restore_rss_mb", rss / 1024)
        record(tool, "restore_pss_mb", last_pss[0] / 1024)
        shutil.rmtree(target, ignore_errors=True)
    for tool in tools:
        prepare()
        seconds, rss = tool.verify()
        record(tool, "verify", seconds)
        record(tool, "verify_rss_mb", rss / 1024)


def report(title: str, tools: list[Tool], medians: dict[str, dict[str, float]]) -> None:
    """A markdown table: each step's figure per tool, insite's as a ratio to restic's."""
    names = [t.name for t in tools]
    print(f"\n{title}\n")
    print("| step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for metric, label, unit in METRICS:
        cells = []
        for name in names:
            value = medians[name][metric]
            cell = f"{value:.2f} s" if unit == "s" else f"{value:.0f} {unit}"
            if name == "insite" and "restic" in medians and medians["restic"][metric]:
                cell += f" ({value / medians['restic'][metric]:.2f}x)"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink the tree (file counts and large files) for quick runs, e.g. 0.25")
    parser.add_argument("--runs", type=int, default=1, help="repeat each measurement and take the median")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--tools", default="insite,restic,borg")
    parser.add_argument("--modes", default="warm,cold", help="warm, cold (page cache dropped before each step)")
    parser.add_argument("--single-file-mb", type=int, default=0,
                        help="also back up one file of this size and report insite's peak RSS")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="insite-bench-"))
    tree = work / "tree"
    original = work / "tree-original"
    if not original.exists():
        print(f"generating the tree (scale {args.scale}) in {original} …", file=sys.stderr)
        make_tree(original, args.scale)
    tree.mkdir(exist_ok=True)
    size = dir_size(original)
    files = sum(1 for p in original.rglob("*") if p.is_file())
    wanted = args.tools.split(",")
    tools = [cls(work, tree) for cls in (Insite, Restic, Borg) if cls.name in wanted]
    missing = [t.name for t in tools if not t.available()]
    tools = [t for t in tools if t.available()]
    modes = args.modes.split(",")
    if "cold" in modes and not drop_caches():
        print("cold runs unavailable: cannot write /proc/sys/vm/drop_caches (needs root)", file=sys.stderr)
        modes.remove("cold")
    all_medians = {}
    for mode in modes:
        results: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.runs):
            measure(tools, tree, original, work, mode == "cold", results)
        medians = {name: {k: statistics.median(v) for k, v in metrics.items()} for name, metrics in results.items()}
        all_medians[mode] = medians
        caches = "page cache dropped before each step" if mode == "cold" else "warm page cache"
        report(f"{mode}: {size / 2**20:.0f} MiB in {files} files; {caches}; median of {args.runs} run(s); "
               f"{os.cpu_count()} cores" + (f"; not installed: {', '.join(missing)}" if missing else ""),
               tools, medians)
    print(json.dumps({"size_mib": round(size / 2**20), "files": files, "medians": all_medians}), file=sys.stderr)
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
